-- The sample shop's operational tables, for sample-data/postgres/inlet.toml.
--   psql "$PG_URL" -f sample-data/postgres/setup.sql
-- CDC needs `wal_level = logical` on the server.
CREATE TABLE customers (
  id integer PRIMARY KEY,
  name text NOT NULL,
  email text,
  tier text NOT NULL DEFAULT 'basic',
  profile text,              -- large: PostgreSQL keeps it out of line (TOAST)
  updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE customers ALTER COLUMN profile SET STORAGE EXTERNAL;
CREATE TABLE orders (
  order_id bigint PRIMARY KEY,
  customer_id integer NOT NULL REFERENCES customers (id),
  amount numeric(12,2) NOT NULL,
  status text NOT NULL,
  ordered_at timestamptz NOT NULL
);
INSERT INTO customers (id, name, email, tier, profile)
SELECT g, 'customer ' || g, 'c' || g || '@example.com', CASE WHEN g % 5 = 0 THEN 'gold' ELSE 'basic' END,
       repeat(md5(g::text), 100)
FROM generate_series(1, 50) g;
INSERT INTO orders
SELECT g, 1 + g % 50, (g * 7) % 500 + 0.99, (ARRAY['new', 'paid', 'shipped'])[1 + g % 3],
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
FROM generate_series(1, 200) g;
