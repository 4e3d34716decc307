-- Bulk load for `trove-bench count`: :rows instance_modules rows in one statement each, no round trips.
-- Placeholders ({{...}}) are substituted by count.rs before this runs.
--
-- Layout (rows = R): R/2 instances over 1,000 tenants, 1 % of them deleted and 5 % cluster members;
-- the measured module M has one row on every instance (4 md5s: 40 % V1, 30 % V2, 20 % V3, 10 % the
-- current md5), live unless the instance is deleted (deleting an instance retires its rows), plus
-- R/5 retired rows; a second module O has 3R/10 rows, likewise.
-- Total: R/2 + R/5 + 3R/10 = R rows.
INSERT INTO clusters (id, created, updated, name, task_id, tenant_id, datastore_version_id)
SELECT 'bc' || lpad(c::text, 30, '0'), now(), now(), 'bench-cluster-' || c, 1,
       md5('tenant' || (c % 1000)), '{{dsv}}'
FROM generate_series(0, {{instances}} / 100) AS c;

INSERT INTO instances (id, created, updated, name, task_id, task_description, flavor_id, tenant_id,
                       datastore_version_id, cluster_id, region_id, server_status, deleted, deleted_at)
SELECT md5('inst' || g), now() - make_interval(secs => g), now(), 'bench-' || g, 1,
       'No tasks for the instance.', '15', md5('tenant' || (g % 997)), '{{dsv}}',
       CASE WHEN g % 20 = 1 THEN 'bc' || lpad((g / 100)::text, 30, '0') END,
       'RegionOne', 'ACTIVE', g % 100 = 7, CASE WHEN g % 100 = 7 THEN now() END
FROM generate_series(1, {{instances}}) AS g;

-- M: one live row per instance, four versions.
INSERT INTO instance_modules (id, instance_id, module_id, md5, created, updated, deleted, clustered)
SELECT md5('imM' || g), md5('inst' || g), '{{module}}',
       CASE WHEN g % 10 < 4 THEN md5('V1') WHEN g % 10 < 7 THEN md5('V2')
            WHEN g % 10 < 9 THEN md5('V3') ELSE '{{md5}}' END,
       timestamp '2026-11-01' + make_interval(secs => g),
       timestamp '2026-11-01' + make_interval(secs => g * 2),
       g % 100 = 7, g % 20 = 1
FROM generate_series(1, {{instances}}) AS g;

-- M: retired rows (earlier versions on the same instances).
INSERT INTO instance_modules (id, instance_id, module_id, md5, created, updated, deleted, deleted_at,
                              clustered)
SELECT md5('imMd' || g), md5('inst' || (1 + g % {{instances}})), '{{module}}', md5('V0'),
       timestamp '2026-10-01', timestamp '2026-10-02', true, timestamp '2026-11-01',
       (1 + g % {{instances}}) % 20 = 1
FROM generate_series(1, {{retired}}) AS g;

-- O: another module on the first instances.
INSERT INTO instance_modules (id, instance_id, module_id, md5, created, updated, deleted, clustered)
SELECT md5('imO' || g), md5('inst' || g), '{{other}}', '{{other_md5}}',
       timestamp '2026-11-01', timestamp '2026-11-01', g % 100 = 7, g % 20 = 1
FROM generate_series(1, {{other_rows}}) AS g;
