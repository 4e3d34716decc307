DROP INDEX instances_host_port;
ALTER TABLE instances DROP COLUMN port;
ALTER TABLE instances DROP COLUMN address;
ALTER TABLE instances DROP COLUMN compute_host;
