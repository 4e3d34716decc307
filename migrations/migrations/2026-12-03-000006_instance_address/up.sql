-- Every instance is a real database server on the host whose taskmanager started its guest (the
-- `local` compute driver): where it runs and where its server listens. Rows created before this
-- migration have no host (their taskmanager treats them as its own) and no port until their guest is
-- next started.
ALTER TABLE instances ADD COLUMN compute_host varchar(255);
ALTER TABLE instances ADD COLUMN address varchar(255);
ALTER TABLE instances ADD COLUMN port integer;
-- One live instance per port and host: concurrent allocations race on this index and the loser picks
-- again. A deleted instance frees its port.
CREATE UNIQUE INDEX instances_host_port ON instances (compute_host, port)
    WHERE NOT deleted AND port IS NOT NULL;
