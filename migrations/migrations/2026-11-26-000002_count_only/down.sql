-- Rows retired by up.sql stay retired: trove-rs never revives a deleted instance's rows.
DROP TRIGGER instance_module_counts_truncate ON instance_modules;
DROP TRIGGER instance_module_counts_delete ON instance_modules;
DROP TRIGGER instance_module_counts_update ON instance_modules;
DROP TRIGGER instance_module_counts_insert ON instance_modules;
DROP FUNCTION instance_module_counts_apply();
DROP TABLE instance_module_counts;
DROP INDEX instance_modules_module_md5;
CREATE INDEX instance_modules_module_md5 ON instance_modules (module_id, md5) INCLUDE (updated, instance_id)
  WHERE NOT deleted;
ALTER TABLE instance_modules DROP COLUMN clustered;
