-- When a reapply cast an item's module_apply a second time: an item still unanswered halfway through
-- module_reapply_instance_timeout is cast once more, so a cast the broker lost (a transient cast and a
-- broker restart) does not fail its instance.
ALTER TABLE reapply_job_items ADD COLUMN recast_at timestamp without time zone;
-- The driver's poll for those items: without it, the items already cast again would be scanned on
-- every poll for the rest of the timeout.
CREATE INDEX reapply_job_items_recast ON reapply_job_items (job_id, sent_at)
    WHERE state = 'sent' AND recast_at IS NULL;
