-- Per-tenant quotas as Trove has them (trove/quota/models.py; the tables of Trove's init migration,
-- 906cffda7b29): `quotas` holds a tenant's overrides of the default hard limits
-- (`max_<resource>_per_tenant`), `quota_usages` what each tenant holds. Trove's third table,
-- `reservations`, is not needed: a create reserves and commits its usage in the transaction that
-- inserts its rows (docs/ARCHITECTURE.md, "Quotas").

CREATE TABLE quotas (
  id         varchar(36) PRIMARY KEY,
  created    timestamp NOT NULL,
  updated    timestamp NOT NULL,
  tenant_id  varchar(64) NOT NULL,
  resource   varchar(255) NOT NULL,
  -- -1: unlimited.
  hard_limit integer NOT NULL,
  CONSTRAINT quotas_tenant_resource UNIQUE (tenant_id, resource)
);

CREATE TABLE quota_usages (
  id        varchar(36) PRIMARY KEY,
  created   timestamp NOT NULL,
  updated   timestamp NOT NULL,
  tenant_id varchar(64) NOT NULL,
  resource  varchar(255) NOT NULL,
  in_use    integer NOT NULL DEFAULT 0,
  -- Trove's resources reserved by a create still in flight; always 0 here once a create commits.
  reserved  integer NOT NULL DEFAULT 0,
  CONSTRAINT quota_usages_tenant_resource UNIQUE (tenant_id, resource)
);

-- What an instance holds of its tenant's usage: `quota_held` from its create until it is given back
-- (deleted, or its build failed), and the RAM (MB) its create counted, so the same amount goes back
-- whatever happens to its flavor meanwhile (one instance and `volume_size` GB are the rest).
ALTER TABLE instances ADD COLUMN quota_held boolean NOT NULL DEFAULT false;
ALTER TABLE instances ADD COLUMN quota_ram integer NOT NULL DEFAULT 0;

-- Instances from before quotas: the live ones whose build did not fail hold their usage now.
UPDATE instances i
   SET quota_held = true, quota_ram = coalesce((SELECT ram FROM flavors f WHERE f.id = i.flavor_id), 0)
 WHERE NOT i.deleted AND i.task_id NOT IN (80, 81, 82, 83, 84, 91, 92);
INSERT INTO quota_usages (id, created, updated, tenant_id, resource, in_use, reserved)
SELECT gen_random_uuid()::text, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', tenant_id, r.resource,
       CASE r.resource WHEN 'instances' THEN count(*)
                       WHEN 'ram' THEN coalesce(sum(quota_ram), 0)
                       ELSE coalesce(sum(volume_size), 0) END,
       0
  FROM instances CROSS JOIN (VALUES ('instances'), ('ram'), ('volumes')) AS r (resource)
 WHERE quota_held
 GROUP BY tenant_id, r.resource;

-- Usage is given back exactly once, whoever writes the row: when an instance that holds it is marked
-- deleted, enters one of Trove's BUILDING_ERROR_* tasks (trove/instance/tasks.py: DNS 0x50, SERVER
-- 0x51, VOLUME 0x52, SEC_GROUP 0x53, REPLICA 0x54, TIMEOUT_GA 0x5b, PORT 0x5c), or is removed. The
-- trigger clears `quota_held` in the same write, and runs under that row's lock (PostgreSQL hands a
-- BEFORE trigger the row's newest version once it holds the lock), so of two concurrent writes only
-- the first gives anything back. The tenant's usage rows are locked in key order, as a create locks
-- them, and never go below zero (Trove's commit clamps in_use the same way).
CREATE FUNCTION instances_release_quota() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM quota_usages
    WHERE tenant_id = OLD.tenant_id AND resource IN ('instances', 'ram', 'volumes')
    ORDER BY resource FOR UPDATE;
  UPDATE quota_usages
     SET in_use = greatest(in_use - CASE resource WHEN 'instances' THEN 1
                                                  WHEN 'ram' THEN OLD.quota_ram
                                                  ELSE coalesce(OLD.volume_size, 0) END, 0),
         updated = now() AT TIME ZONE 'UTC'
   WHERE tenant_id = OLD.tenant_id AND resource IN ('instances', 'ram', 'volumes');
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  NEW.quota_held := false;
  RETURN NEW;
END $$;

CREATE TRIGGER instances_release_quota BEFORE UPDATE OF deleted, task_id ON instances
  FOR EACH ROW
  WHEN (OLD.quota_held AND (NEW.deleted OR NEW.task_id IN (80, 81, 82, 83, 84, 91, 92)))
  EXECUTE FUNCTION instances_release_quota();
CREATE TRIGGER instances_release_quota_on_delete BEFORE DELETE ON instances
  FOR EACH ROW WHEN (OLD.quota_held)
  EXECUTE FUNCTION instances_release_quota();
