-- A reapply's driver polls its batch in flight: is a sent item still unstamped, and the latest
-- sent_at. This makes both an index lookup, however many items a batch holds.
CREATE INDEX reapply_job_items_sent ON reapply_job_items (job_id, sent_at) WHERE state = 'sent';
