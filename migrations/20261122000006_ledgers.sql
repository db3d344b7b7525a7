-- What the invariant checker (`warren chaos verify`) needs to prove conservation from the
-- tables alone, and how many duplicate deliveries each inbox absorbed.

-- Stock on hand as last set: an upsert sets `available`; reserved and sold stock stay where
-- they are, so on hand becomes available + reserved + sold. Every later move keeps the sum.
ALTER TABLE inventory.products ADD COLUMN stocked bigint;
UPDATE inventory.products SET stocked = available + reserved + sold;
ALTER TABLE inventory.products ALTER COLUMN stocked SET NOT NULL;

-- Money as last set: a balance set leaves standing charges standing, so the customer's funds
-- become the new balance plus those charges. Every later charge or refund keeps the sum.
ALTER TABLE payments.accounts ADD COLUMN funded_cents bigint;
UPDATE payments.accounts a SET funded_cents = a.balance_cents + COALESCE(
    (SELECT sum(c.amount_cents) FROM payments.charges c
      WHERE c.customer_id = a.customer_id AND c.status = 'charged'), 0);
ALTER TABLE payments.accounts ALTER COLUMN funded_cents SET NOT NULL;

DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['orders', 'inventory', 'payments', 'images', 'notifications', 'sagas'] LOOP
        EXECUTE format('ALTER TABLE %I.inbox ADD COLUMN duplicates integer NOT NULL DEFAULT 0', s);
    END LOOP;
END
$$;
