DROP TRIGGER instances_release_quota_on_delete ON instances;
DROP TRIGGER instances_release_quota ON instances;
DROP FUNCTION instances_release_quota();
ALTER TABLE instances DROP COLUMN quota_ram;
ALTER TABLE instances DROP COLUMN quota_held;
DROP TABLE quota_usages;
DROP TABLE quotas;
