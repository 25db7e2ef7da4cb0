-- duffy 0004: the event outbox (published to beanstalkd by `crate::bus`, see ARCHITECTURE.md
-- "Event bus"). Rows are written by triggers in the transaction of the change itself, so *every*
-- node and session transition is captured, whoever writes it: duffy (actor, reason and session
-- taken from the duffy_node_history / duffy_audit_log rows of the same transaction) or
-- upstream's own tools on a shared database (actor `db:<user>`). Upstream's tables get plain
-- AFTER triggers only: no column, constraint or enum value is added, so upstream's alembic and
-- code keep working. Nothing is collected until a duffy process configured with
-- `events.beanstalkd` enabled the bus (a row in duffy_event_cursor). The trigger functions run
-- as their owner (SECURITY DEFINER, fixed search_path): another role writing upstream's tables
-- needs no rights on duffy's; `session_user` still names who wrote.

-- one row per bus: the commit sequence number delivered last
CREATE TABLE duffy_event_cursor (
  name       text PRIMARY KEY,
  seq        bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- undelivered events (delivered ones are deleted with the cursor update)
CREATE TABLE duffy_events (
  id         bigserial PRIMARY KEY,
  xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
  at         timestamptz NOT NULL DEFAULT clock_timestamp(),
  kind       text NOT NULL,
  node_id    integer,
  session_id integer,
  tenant_id  integer,
  pool       text,
  from_state text,
  to_state   text,
  actor      text NOT NULL,
  reason     text
);
CREATE INDEX duffy_events_xid_index ON duffy_events (xid);

-- commit order: one row per transaction that wrote events, numbered at commit time under a lock
-- (so `seq` order is the order in which those transactions became visible, and a reader that
-- sees seq N knows every lower seq is final)
CREATE TABLE duffy_event_commits (
  seq bigserial PRIMARY KEY,
  xid xid8 NOT NULL UNIQUE
);

CREATE FUNCTION duffy_event_commit() RETURNS trigger LANGUAGE plpgsql
  SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  -- once per transaction (the first of its event rows); the lock is held until the commit is
  -- visible, so commit numbers follow visibility order
  IF current_setting('duffy.event_xid', true) IS DISTINCT FROM pg_current_xact_id()::text THEN
    PERFORM pg_advisory_xact_lock(7310593858020734580); -- "duffy_ev"
    INSERT INTO duffy_event_commits (xid) VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING;
    PERFORM set_config('duffy.event_xid', pg_current_xact_id()::text, true);
    PERFORM pg_notify('duffy_outbox', '');
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER duffy_events_commit AFTER INSERT ON duffy_events
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION duffy_event_commit();

-- nodes: created, state changed, deleted
CREATE FUNCTION duffy_node_event() RETURNS trigger LANGUAGE plpgsql
  SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  node_xmin xid;
  h record;
  sid integer;
  tid integer;
  kind text;
  actor text := 'db:' || session_user;
  reason text;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM duffy_event_cursor) THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'DELETE' THEN
    INSERT INTO duffy_events (kind, node_id, pool, from_state, to_state, actor)
    VALUES ('node.deleted', OLD.id, OLD.pool, OLD.state::text, NULL, actor);
    RETURN NULL;
  END IF;
  kind := CASE TG_OP WHEN 'INSERT' THEN 'node.created' ELSE 'node.transition' END;
  -- duffy writes the history row in the statement that changes the node: same (sub)transaction
  SELECT xmin INTO node_xmin FROM nodes WHERE id = NEW.id;
  SELECT hh.actor, hh.reason, hh.session_id, hh.xmin AS x, hh.from_state::text AS f,
         hh.to_state::text AS t
    INTO h FROM duffy_node_history hh WHERE hh.node_id = NEW.id ORDER BY hh.id DESC LIMIT 1;
  IF FOUND AND h.x = node_xmin AND h.t IS NOT DISTINCT FROM NEW.state::text
     AND (TG_OP = 'INSERT' OR h.f IS NOT DISTINCT FROM OLD.state::text) THEN
    actor := h.actor;
    reason := h.reason;
    sid := h.session_id;
  END IF;
  -- a node lent by another tool: its active session (only in the states of a lent node:
  -- upstream has no index on sessions_nodes.node_id)
  IF sid IS NULL AND NEW.state IN ('contextualizing', 'deployed') THEN
    SELECT s.id INTO sid FROM sessions_nodes sn JOIN sessions s ON s.id = sn.session_id
     WHERE sn.node_id = NEW.id AND s.retired_at IS NULL ORDER BY s.id DESC LIMIT 1;
  END IF;
  IF sid IS NOT NULL THEN
    SELECT s.tenant_id INTO tid FROM sessions s WHERE s.id = sid;
  END IF;
  INSERT INTO duffy_events (kind, node_id, session_id, tenant_id, pool, from_state, to_state, actor, reason)
  VALUES (kind, NEW.id, sid, tid, NEW.pool,
          CASE WHEN TG_OP = 'UPDATE' THEN OLD.state::text END, NEW.state::text, actor, reason);
  RETURN NULL;
END $$;
CREATE TRIGGER duffy_nodes_event AFTER INSERT OR DELETE ON nodes
  FOR EACH ROW EXECUTE FUNCTION duffy_node_event();
CREATE TRIGGER duffy_nodes_state_event AFTER UPDATE OF state ON nodes
  FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION duffy_node_event();

-- sessions: created, retired (or active again), deleted
CREATE FUNCTION duffy_session_event() RETURNS trigger LANGUAGE plpgsql
  SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM duffy_event_cursor) THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'DELETE' THEN
    INSERT INTO duffy_events (kind, session_id, tenant_id, from_state, to_state, actor)
    VALUES ('session.deleted', OLD.id, OLD.tenant_id,
            CASE WHEN OLD.retired_at IS NULL THEN 'active' ELSE 'retired' END, NULL,
            'db:' || session_user);
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO duffy_events (kind, session_id, tenant_id, from_state, to_state, actor)
    VALUES ('session.created', NEW.id, NEW.tenant_id, NULL,
            CASE WHEN NEW.retired_at IS NULL THEN 'active' ELSE 'retired' END,
            'db:' || session_user);
  ELSE
    INSERT INTO duffy_events (kind, session_id, tenant_id, from_state, to_state, actor)
    VALUES (CASE WHEN NEW.retired_at IS NULL THEN 'session.reactivated' ELSE 'session.retired' END,
            NEW.id, NEW.tenant_id,
            CASE WHEN OLD.retired_at IS NULL THEN 'active' ELSE 'retired' END,
            CASE WHEN NEW.retired_at IS NULL THEN 'active' ELSE 'retired' END,
            'db:' || session_user);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER duffy_sessions_event AFTER INSERT OR DELETE ON sessions
  FOR EACH ROW EXECUTE FUNCTION duffy_session_event();
CREATE TRIGGER duffy_sessions_retired_event AFTER UPDATE OF retired_at ON sessions
  FOR EACH ROW WHEN ((OLD.retired_at IS NULL) <> (NEW.retired_at IS NULL))
  EXECUTE FUNCTION duffy_session_event();

-- duffy's audit row of a session change (written after the change, in its transaction) names
-- who did it: the session event of that transaction takes it as its actor
CREATE FUNCTION duffy_session_event_actor() RETURNS trigger LANGUAGE plpgsql
  SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
  UPDATE duffy_events SET actor = NEW.actor
   WHERE xid = pg_current_xact_id() AND session_id = NEW.entity_id AND actor LIKE 'db:%'
     AND kind = CASE NEW.action WHEN 'create' THEN 'session.created'
                                WHEN 'retire' THEN 'session.retired'
                                WHEN 'rollback' THEN 'session.deleted' END;
  RETURN NULL;
END $$;
CREATE TRIGGER duffy_audit_log_session_actor AFTER INSERT ON duffy_audit_log
  FOR EACH ROW WHEN (NEW.entity = 'session' AND NEW.action IN ('create', 'retire', 'rollback'))
  EXECUTE FUNCTION duffy_session_event_actor();
