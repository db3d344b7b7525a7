-- The business tables of the order, inventory and payment participants. Money is integer
-- cents. Every business key is a primary key, so a command re-sent under a new message id
-- (which the inbox cannot recognise) still finds the row the first one left. CHECK
-- constraints keep stock and balances from ever going negative, whatever the code does.

-- Orders. A cancel that arrives before its create leaves a tombstone (status cancelled,
-- no customer, no items) so the late create is rejected instead of resurrecting the order.
CREATE TABLE orders.orders (
    order_id      uuid PRIMARY KEY,
    customer_id   text,
    status        text NOT NULL CHECK (status IN ('pending', 'confirmed', 'cancelled')),
    total_cents   bigint CHECK (total_cents >= 0),
    items         jsonb NOT NULL DEFAULT '[]',
    cancel_reason text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT only_tombstones_lack_a_customer CHECK (customer_id IS NOT NULL OR status = 'cancelled'),
    CONSTRAINT confirmed_orders_have_a_total CHECK (status <> 'confirmed' OR total_cents IS NOT NULL)
);

-- Stock on hand is available + reserved; sold is what confirmed orders took. Conservation:
-- the stock last set by an upsert = available + reserved + sold (for stock moves since).
CREATE TABLE inventory.products (
    sku         text PRIMARY KEY,
    name        text NOT NULL,
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    available   bigint NOT NULL CHECK (available >= 0),
    reserved    bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold        bigint NOT NULL DEFAULT 0 CHECK (sold >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per order that inventory heard of. `lines` holds the priced lines while (and after)
-- stock is held; a failed reservation or a release tombstone holds none. `committed` means
-- the order was confirmed and its reserved stock became sold.
CREATE TABLE inventory.reservations (
    order_id    uuid PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('reserved', 'released', 'failed', 'committed')),
    lines       jsonb NOT NULL DEFAULT '[]',
    total_cents bigint NOT NULL DEFAULT 0 CHECK (total_cents >= 0),
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments.accounts (
    customer_id   text PRIMARY KEY,
    balance_cents bigint NOT NULL CHECK (balance_cents >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per order that payments heard of. A refund that arrives before its charge leaves a
-- `voided` tombstone (no customer) so the late charge is declined. Conservation: the balance
-- last set = balance + the amounts of `charged` rows (refunded rows were paid back).
CREATE TABLE payments.charges (
    order_id     uuid PRIMARY KEY,
    customer_id  text,
    amount_cents bigint NOT NULL DEFAULT 0 CHECK (amount_cents >= 0),
    status       text NOT NULL CHECK (status IN ('charged', 'declined', 'refunded', 'voided')),
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT only_tombstones_lack_a_customer CHECK (customer_id IS NOT NULL OR status = 'voided')
);
CREATE INDEX charges_customer ON payments.charges (customer_id);
