-- duffy 0002: the scheduler's durable job queue (provision / deprovision runs of playbooks).
-- A job is claimed with FOR UPDATE SKIP LOCKED and holds a lease that its scheduler renews while
-- the playbook runs; a job whose lease ran out (scheduler killed) is claimed again by any
-- scheduler. No foreign keys into upstream tables (node rows may be deleted by upstream tools).
CREATE TABLE duffy_jobs (
  id          bigserial PRIMARY KEY,
  kind        text NOT NULL CHECK (kind IN ('provision', 'deprovision')),
  pool        text NOT NULL,
  node_ids    integer[] NOT NULL,
  state       text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'failed')),
  attempts    integer NOT NULL DEFAULT 0,
  not_before  timestamptz NOT NULL DEFAULT clock_timestamp(),
  lease_until timestamptz,
  leased_by   text,
  last_error  text,
  log_path    text,
  created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
  updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
  finished_at timestamptz
);
CREATE INDEX duffy_jobs_open_index ON duffy_jobs (state, not_before, id)
  WHERE state IN ('queued', 'running');
CREATE INDEX duffy_jobs_nodes_index ON duffy_jobs USING gin (node_ids)
  WHERE state IN ('queued', 'running');
CREATE INDEX duffy_jobs_pool_index ON duffy_jobs (pool, kind, id);
