-- module-instance-count (docs/module-semantics.md §8) in a few index lookups, whatever the fleet size.
--
-- instance_module_counts holds, per (module, md5, cluster member or not), how many live
-- instance_modules rows there are. Statement-level triggers keep it exact for every write to
-- instance_modules, whoever makes it (one aggregated upsert per statement, in key order). The admin
-- count query reads it for instance_count and takes min/max(updated) from one index descent each.
-- It relies on two invariants, kept by trove-rs and established here for data migrated from Trove:
-- no deleted instance holds a live row, and `clustered` says whether the row's instance is a cluster
-- member (membership never changes after an instance is created).

ALTER TABLE instance_modules ADD COLUMN clustered boolean NOT NULL DEFAULT false;
UPDATE instance_modules im SET clustered = true
  FROM instances i WHERE i.id = im.instance_id AND i.cluster_id IS NOT NULL;

-- Trove leaves the rows of deleted instances live; trove-rs retires them with the instance.
UPDATE instance_modules im
   SET deleted = true, deleted_at = coalesce(i.deleted_at, now() AT TIME ZONE 'UTC')
  FROM instances i
 WHERE i.id = im.instance_id AND i.deleted AND NOT im.deleted;

-- Replaces (module_id, md5) INCLUDE (updated, instance_id): min/max(updated) per group by descent.
DROP INDEX instance_modules_module_md5;
CREATE INDEX instance_modules_module_md5 ON instance_modules (module_id, clustered, md5, updated)
  WHERE NOT deleted;

CREATE TABLE instance_module_counts (
  module_id varchar(64) NOT NULL,
  md5       char(32) NOT NULL,
  clustered boolean NOT NULL,
  -- No CHECK (instances >= 0): an upsert's proposed row carries the (possibly negative) delta, and
  -- PostgreSQL checks that row before it resolves the conflict.
  instances bigint NOT NULL,
  PRIMARY KEY (module_id, md5, clustered)
);
INSERT INTO instance_module_counts (module_id, md5, clustered, instances)
SELECT module_id, md5, clustered, count(*) FROM instance_modules WHERE NOT deleted
 GROUP BY module_id, md5, clustered;

-- One function for every statement: +1 per live row in new_rows, -1 per live row in old_rows, summed
-- per key; keys whose sum is 0 (an update that only moved `updated`) are not written at all.
CREATE FUNCTION instance_module_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO instance_module_counts AS c (module_id, md5, clustered, instances)
    SELECT module_id, md5, clustered, count(*) FROM new_rows WHERE NOT deleted
     GROUP BY module_id, md5, clustered ORDER BY module_id, md5, clustered
    ON CONFLICT (module_id, md5, clustered) DO UPDATE SET instances = c.instances + excluded.instances;
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO instance_module_counts AS c (module_id, md5, clustered, instances)
    SELECT module_id, md5, clustered, sum(d) FROM (
        SELECT module_id, md5, clustered, 1 AS d FROM new_rows WHERE NOT deleted
        UNION ALL
        SELECT module_id, md5, clustered, -1 FROM old_rows WHERE NOT deleted) x
     GROUP BY module_id, md5, clustered HAVING sum(d) <> 0 ORDER BY module_id, md5, clustered
    ON CONFLICT (module_id, md5, clustered) DO UPDATE SET instances = c.instances + excluded.instances;
  ELSIF TG_OP = 'DELETE' THEN
    UPDATE instance_module_counts c SET instances = c.instances - o.n
      FROM (SELECT module_id, md5, clustered, count(*) AS n FROM old_rows WHERE NOT deleted
             GROUP BY module_id, md5, clustered) o
     WHERE c.module_id = o.module_id AND c.md5 = o.md5 AND c.clustered = o.clustered;
  ELSE -- TRUNCATE
    DELETE FROM instance_module_counts;
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER instance_module_counts_insert AFTER INSERT ON instance_modules
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION instance_module_counts_apply();
CREATE TRIGGER instance_module_counts_update AFTER UPDATE ON instance_modules
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION instance_module_counts_apply();
CREATE TRIGGER instance_module_counts_delete AFTER DELETE ON instance_modules
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION instance_module_counts_apply();
CREATE TRIGGER instance_module_counts_truncate AFTER TRUNCATE ON instance_modules
  FOR EACH STATEMENT EXECUTE FUNCTION instance_module_counts_apply();
