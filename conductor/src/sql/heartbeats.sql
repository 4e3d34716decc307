-- The heartbeats of one round (at most one per instance), in one statement.
--   $1 instance ids, $2 their `sent`, $3 the status code each description names (NULL: unknown),
--   $4 its description, $5 the lastseen method name ('heartbeat'), $6 RESTART_REQUIRED's code,
--   $7 now.
-- A heartbeat counts only for a live instance and when it is newer than the last one seen
-- (conductor_lastseen); then the status is set from the description, except that RESTART_REQUIRED
-- is kept (only updated_at moves) and an unknown description changes nothing.
-- Returns facts (v = instance id, k = what happened): live, seen, kept | row, changed.
WITH u AS (
  SELECT * FROM unnest($1::text[], $2::float8[], $3::int4[], $4::text[])
             AS u(instance_id, sent, code, descr)
), live AS (
  SELECT id FROM instances WHERE id = ANY($1) AND deleted = false
), seen AS (
  INSERT INTO conductor_lastseen (instance_id, method_name, sent)
  SELECT u.instance_id, $5, u.sent FROM u JOIN live ON live.id = u.instance_id
   ORDER BY u.instance_id
  ON CONFLICT (instance_id, method_name) DO UPDATE SET sent = excluded.sent
  WHERE excluded.sent > conductor_lastseen.sent
  RETURNING instance_id
), cur AS (
  SELECT s.instance_id, s.status_id FROM service_statuses s
   WHERE s.instance_id IN (SELECT instance_id FROM seen)
), changed AS (
  UPDATE service_statuses s
     SET status_id = CASE WHEN s.status_id = $6 THEN s.status_id ELSE u.code END,
         status_description = CASE WHEN s.status_id = $6 THEN s.status_description
                                   ELSE u.descr END,
         updated_at = $7
    FROM u
   WHERE s.instance_id = u.instance_id
     AND s.instance_id IN (SELECT instance_id FROM seen)
     AND (s.status_id = $6 OR u.code IS NOT NULL)
  RETURNING s.instance_id
)
SELECT id AS v, 'live' AS k FROM live
UNION ALL SELECT instance_id, 'seen' FROM seen
UNION ALL SELECT instance_id, CASE WHEN status_id = $6 THEN 'kept' ELSE 'row' END FROM cur
UNION ALL SELECT instance_id, 'changed' FROM changed
