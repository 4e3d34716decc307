-- The `module_results` reports of one round (at most one per instance), in one statement.
--   Reports: $1 instance ids, $2 job ids (NULL: not a reapply answer), $3 `sent`, $4 and $5 the
--   job item's verdict (status, message; NULL without a job).
--   Results, each module at most once per report: $6 instance id, $7 module id, $8 md5,
--   $9 status, $10 message, $11 guest_created, $12 guest_updated.
--   $13 the lastseen method name ('module_results'), $14 now.
-- A report counts only for a live instance. A report without a job must also be newer than the
-- last one seen (conductor_lastseen); a reapply answer skips that check (answers for different
-- jobs must all count, whatever their order) and is deduplicated by its item instead: only an item
-- still `sent` takes the answer. Every result of a report that counts goes to guest_module_results
-- unless the stored row is newer.
-- Returns facts (v = instance id, k = what happened): live, seen, stored (one per row), answered.
--
-- The item's state is tested with IS NOT DISTINCT FROM (the same for a NOT NULL column) so that no
-- index on `state` can serve it: `sent` is a passing state, the planner's statistics put few items
-- in it, and with `= 'sent'` it scanned every `sent` item of the job through the partial index
-- reapply_job_items_sent and hash-joined them with the answers (10,000 items read to answer 58, at
-- every batch). This way each answer finds its item by primary key.
WITH rep AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], $5::text[])
             AS rep(instance_id, job_id, sent, status, message)
), live AS (
  SELECT id FROM instances WHERE id = ANY($1) AND deleted = false
), seen AS (
  INSERT INTO conductor_lastseen (instance_id, method_name, sent)
  SELECT rep.instance_id, $13, rep.sent FROM rep JOIN live ON live.id = rep.instance_id
   WHERE rep.job_id IS NULL
   ORDER BY rep.instance_id
  ON CONFLICT (instance_id, method_name) DO UPDATE SET sent = excluded.sent
  WHERE excluded.sent > conductor_lastseen.sent
  RETURNING instance_id
), counted AS (
  SELECT rep.instance_id FROM rep JOIN live ON live.id = rep.instance_id
   WHERE rep.job_id IS NOT NULL
  UNION ALL SELECT instance_id FROM seen
), r AS (
  SELECT * FROM unnest($6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                       $11::text[], $12::text[])
           WITH ORDINALITY AS r(instance_id, module_id, md5, status, message,
                                guest_created, guest_updated, n)
), stored AS (
  INSERT INTO guest_module_results
    (instance_id, module_id, md5, status, message, guest_created, guest_updated, reported_at)
  SELECT r.instance_id, r.module_id, r.md5, r.status, r.message, r.guest_created,
         r.guest_updated, $14
    FROM r JOIN counted ON counted.instance_id = r.instance_id
   ORDER BY r.n
  ON CONFLICT (instance_id, module_id) DO UPDATE SET
    md5 = excluded.md5, status = excluded.status, message = excluded.message,
    guest_created = excluded.guest_created, guest_updated = excluded.guest_updated,
    reported_at = excluded.reported_at
  WHERE excluded.guest_updated IS NULL OR guest_module_results.guest_updated IS NULL
     OR excluded.guest_updated >= guest_module_results.guest_updated
  RETURNING instance_id
), answered AS (
  UPDATE reapply_job_items i
     SET state = 'answered', answered_at = $14, status = rep.status, message = rep.message
    FROM rep
   WHERE rep.job_id IS NOT NULL
     AND i.job_id = rep.job_id AND i.instance_id = rep.instance_id
     AND i.state IS NOT DISTINCT FROM 'sent'
     AND rep.instance_id IN (SELECT id FROM live)
  RETURNING i.instance_id
)
SELECT id AS v, 'live' AS k FROM live
UNION ALL SELECT instance_id, 'seen' FROM seen
UNION ALL SELECT instance_id, 'stored' FROM stored
UNION ALL SELECT instance_id, 'answered' FROM answered
