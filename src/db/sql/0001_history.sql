-- duffy 0001: append-only audit trail, kept apart from upstream's tables.
-- No foreign keys to upstream tables: upstream deletes node rows (failed provisioning), and an
-- upstream worker running on the same database must never be blocked by our rows.
CREATE TABLE duffy_node_history (
  id         bigserial PRIMARY KEY,
  node_id    integer NOT NULL,
  from_state node_state_enum,          -- NULL: the row was created
  to_state   node_state_enum,          -- NULL: the row was deleted
  pool       text,
  session_id integer,
  actor      text NOT NULL,
  reason     text,
  at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX duffy_node_history_node_index ON duffy_node_history (node_id, id);
CREATE INDEX duffy_node_history_at_index ON duffy_node_history (at);

CREATE TABLE duffy_audit_log (
  id        bigserial PRIMARY KEY,
  entity    text NOT NULL CHECK (entity IN ('tenant', 'session', 'node', 'pool')),
  entity_id integer,
  action    text NOT NULL,
  actor     text NOT NULL,
  detail    jsonb NOT NULL DEFAULT '{}'::jsonb,
  at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX duffy_audit_log_entity_index ON duffy_audit_log (entity, entity_id, id);

CREATE FUNCTION duffy_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER duffy_node_history_append_only BEFORE UPDATE OR DELETE ON duffy_node_history
  FOR EACH ROW EXECUTE FUNCTION duffy_append_only();
CREATE TRIGGER duffy_audit_log_append_only BEFORE UPDATE OR DELETE ON duffy_audit_log
  FOR EACH ROW EXECUTE FUNCTION duffy_append_only();
