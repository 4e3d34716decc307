DROP INDEX reapply_job_items_sent;
