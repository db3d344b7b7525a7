-- The notification service's table. One row per fact a customer is told about, keyed twice:
-- by the event that announced it (a redelivered event keeps its message id) and by the fact
-- itself, (kind, about), since a participant answers a re-sent command with a new event
-- under a new message id. Rows are written by the message handler and delivered afterwards,
-- outside its transaction, by deliverers that claim them with FOR UPDATE SKIP LOCKED.
CREATE TABLE notifications.notifications (
    notification_id uuid PRIMARY KEY,
    source_event    uuid NOT NULL UNIQUE,
    -- The order or image the notification is about.
    about           uuid NOT NULL,
    customer_id     text NOT NULL,
    kind            text NOT NULL,
    subject         text,
    message         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    -- The channel that delivered it.
    channel         text,
    -- Failed deliveries back off through available_at; a parked row waits at 'infinity'
    -- with its last_error until a person sets available_at again.
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    available_at    timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    CONSTRAINT one_notification_per_fact UNIQUE (kind, about),
    CONSTRAINT delivered_rows_name_their_channel CHECK (delivered_at IS NULL OR channel IS NOT NULL)
);

-- A customer's notifications, newest first.
CREATE INDEX notifications_by_customer
    ON notifications.notifications (customer_id, created_at DESC, notification_id DESC);
-- The deliverers' claim walks only undelivered rows, soonest due first.
CREATE INDEX notifications_undelivered
    ON notifications.notifications (available_at) WHERE delivered_at IS NULL;

-- Wakes the deliverers (LISTEN warren_notifications) when inserted rows commit; a rolled-back
-- insert notifies nobody.
CREATE FUNCTION notifications.notify_deliverers() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('warren_notifications', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER notifications_notify AFTER INSERT ON notifications.notifications
    FOR EACH STATEMENT EXECUTE FUNCTION notifications.notify_deliverers();
