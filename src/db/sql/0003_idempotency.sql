-- duffy 0003: `Idempotency-Key` of POST /api/v1/sessions. A client that lost the answer to a
-- create (a restart, a killed server, a dropped connection) sends the same key again and gets
-- the session its first request made instead of a second one. Scoped per tenant, written in the
-- create's own transaction, forgotten after a day. No foreign keys into upstream tables.
CREATE TABLE duffy_idempotency_keys (
  tenant_id  integer NOT NULL,
  key        text NOT NULL,
  session_id integer NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (tenant_id, key)
);
CREATE INDEX duffy_idempotency_keys_session_index ON duffy_idempotency_keys (session_id);
