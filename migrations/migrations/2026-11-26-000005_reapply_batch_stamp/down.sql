DROP INDEX reapply_job_items_sent;
-- Items of a batch in flight take its stamp, as they would have had it before.
UPDATE reapply_job_items i
   SET sent_at = j.batch_sent_at
  FROM reapply_jobs j
 WHERE j.id = i.job_id AND i.state = 'sent' AND i.sent_at IS NULL;
ALTER TABLE reapply_jobs DROP COLUMN batch_sent_at;
CREATE INDEX reapply_job_items_sent ON reapply_job_items (job_id, sent_at) WHERE state = 'sent';
CREATE INDEX reapply_job_items_recast ON reapply_job_items (job_id, sent_at)
    WHERE state = 'sent' AND recast_at IS NULL;
