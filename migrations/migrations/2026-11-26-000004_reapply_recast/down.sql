DROP INDEX reapply_job_items_recast;
ALTER TABLE reapply_job_items DROP COLUMN recast_at;
