-- A reapply batch's casts are confirmed together, so the batch is stamped once, on its job row,
-- instead of on each of its items: a fleet-wide batch used to rewrite (and lock) every item a second
-- time while the guests' answers for those same items waited behind it. Items take their `sent_at`
-- when the batch is settled, from the batch stamp (or their answer, if that came first).
ALTER TABLE reapply_jobs ADD COLUMN batch_sent_at timestamp without time zone;
-- Jobs running now: their batch in flight is stamped if all its items are.
UPDATE reapply_jobs j
   SET batch_sent_at = s.stamp
  FROM (SELECT job_id, CASE WHEN bool_and(sent_at IS NOT NULL) THEN max(sent_at) END AS stamp
          FROM reapply_job_items WHERE state = 'sent' GROUP BY job_id) s
 WHERE s.job_id = j.id AND j.state = 'running';
-- The batch in flight, in instance order (the order every bulk update of items locks them in).
DROP INDEX reapply_job_items_recast;
DROP INDEX reapply_job_items_sent;
CREATE INDEX reapply_job_items_sent ON reapply_job_items (job_id, instance_id) WHERE state = 'sent';
