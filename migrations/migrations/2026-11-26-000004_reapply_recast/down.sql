ALTER TABLE reapply_job_items DROP COLUMN recast_at;
