-- Upstream Duffy v3 schema at alembic head 6654d536b836 (compat spec §1.1), as `duffy setup-db`
-- creates it. Do not add columns here: duffy's own data lives in duffy_* tables.
CREATE TYPE node_state_enum AS ENUM
  ('unused','provisioning','ready','contextualizing','deployed','deprovisioning','done','failed');

CREATE TABLE tenants (
  id                   serial NOT NULL,
  name                 text NOT NULL,
  is_admin             boolean NOT NULL DEFAULT false,
  ssh_key              text NOT NULL,
  api_key              text NOT NULL,
  node_quota           integer,
  session_lifetime     interval,
  session_lifetime_max interval,
  created_at           timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
  retired_at           timestamp without time zone,
  CONSTRAINT tenants_pkey PRIMARY KEY (id),
  CONSTRAINT tenants_name_key UNIQUE (name)
);

CREATE TABLE sessions (
  id         serial NOT NULL,
  tenant_id  integer NOT NULL,
  expires_at timestamp without time zone,
  data       json NOT NULL DEFAULT '{}'::json,
  created_at timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
  retired_at timestamp without time zone,
  CONSTRAINT sessions_pkey PRIMARY KEY (id),
  CONSTRAINT sessions_tenant_id_tenants_fkey FOREIGN KEY (tenant_id) REFERENCES tenants(id)
);

CREATE TABLE nodes (
  id         serial NOT NULL,
  hostname   text,
  ipaddr     text,
  state      node_state_enum NOT NULL DEFAULT 'unused',
  comment    text,
  pool       text,
  reusable   boolean NOT NULL DEFAULT false,
  data       json NOT NULL DEFAULT '{}'::json,
  created_at timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
  retired_at timestamp without time zone,
  CONSTRAINT nodes_pkey PRIMARY KEY (id)
);
CREATE UNIQUE INDEX active_hostname_index ON nodes (hostname)
  WHERE retired_at IS NULL AND state <> 'provisioning' AND state <> 'failed';
CREATE UNIQUE INDEX active_ipaddr_index ON nodes (ipaddr)
  WHERE retired_at IS NULL AND state <> 'provisioning' AND state <> 'failed';
CREATE INDEX nodes_pool_index  ON nodes (pool);
CREATE INDEX nodes_state_index ON nodes (state);

CREATE TABLE sessions_nodes (
  session_id integer NOT NULL,
  node_id    integer NOT NULL,
  pool       text NOT NULL,
  data       json NOT NULL DEFAULT '{}'::json,
  CONSTRAINT sessions_nodes_pkey PRIMARY KEY (session_id, node_id),
  CONSTRAINT sessions_nodes_session_id_sessions_fkey FOREIGN KEY (session_id) REFERENCES sessions(id),
  CONSTRAINT sessions_nodes_node_id_nodes_fkey FOREIGN KEY (node_id) REFERENCES nodes(id)
);
CREATE INDEX sessions_nodes_pool_index       ON sessions_nodes (pool);
CREATE INDEX sessions_nodes_session_id_index ON sessions_nodes (session_id);

CREATE TABLE alembic_version (
  version_num varchar(32) NOT NULL,
  CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO alembic_version VALUES ('6654d536b836');
