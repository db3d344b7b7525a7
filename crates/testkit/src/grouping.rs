//! Checks a handler's group path against its per-message path. The same groups of messages run
//! twice from the same committed state, each time in a transaction that is rolled back
//! afterwards: once one message at a time through `TxHandler::apply`, once a group at a time
//! through `TxHandler::apply_all`, falling back to one at a time when a group fails, as
//! `store::Transactional` does. Both must leave the same rows and send the same replies.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bus::HandlerError;
use contracts::{Envelope, Message, Schemas};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use store::TxHandler;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use uuid::Uuid;

/// A command as the orchestrator sends it, with a saga id, step and trace the replies must
/// carry on.
pub fn sent<M: Message>(message: &M) -> Envelope {
    let trace = Uuid::now_v7().simple().to_string();
    Envelope::new("test", message)
        .with_correlation(Uuid::now_v7())
        .with_step("step")
        .with_traceparent(format!("00-{trace}-{}-01", &trace[..16]))
}

/// A reply without what makes each envelope unique (its id and time).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub message_type: String,
    pub payload: Value,
    pub producer: String,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub traceparent: Option<String>,
    pub step: Option<String>,
}

impl From<&Envelope> for Reply {
    fn from(e: &Envelope) -> Self {
        Self {
            message_type: e.message_type.clone(),
            payload: e.payload.clone(),
            producer: e.producer.clone(),
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            traceparent: e.traceparent.clone(),
            step: e.step.clone(),
        }
    }
}

/// What a run left behind.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub replies: Vec<Reply>,
    /// Messages (by position over all groups) that failed on their own.
    pub refused: Vec<usize>,
    /// Every row of every compared table, timestamps left out.
    pub tables: Value,
}

/// A grouped run: its outcome, which groups failed as a whole, and the statements the
/// groups that went through took.
#[derive(Debug)]
pub struct Grouped {
    pub outcome: Outcome,
    pub fell_back: Vec<usize>,
    pub statements: Vec<usize>,
}

/// The types of a grouped run's replies, in order.
pub fn types(grouped: &Grouped) -> Vec<&str> {
    grouped
        .outcome
        .replies
        .iter()
        .map(|r| r.message_type.as_str())
        .collect()
}

/// `N` fresh ids (orders, for the tests).
pub fn ids<const N: usize>() -> [Uuid; N] {
    std::array::from_fn(|_| Uuid::now_v7())
}

/// Tables to compare, each with the key that orders its rows.
pub type Tables = &'static [(&'static str, &'static str)];

/// A one-at-a-time run: its outcome and the statements its messages took, per group.
#[derive(Debug)]
pub struct OneByOne {
    pub outcome: Outcome,
    pub statements: Vec<usize>,
}

/// Every message of every group, one at a time in order, each in a savepoint.
pub async fn one_by_one<H: TxHandler>(
    pool: &PgPool,
    handler: &H,
    groups: &[Vec<Envelope>],
    tables: Tables,
) -> OneByOne {
    let statements = Statements::default();
    let _counting = tracing::subscriber::set_default(statements.clone());
    let mut tx = pool.begin().await.unwrap();
    let mut run = Run::new(statements.clone());
    let mut counts = Vec::new();
    for group in groups {
        let before = run.taken;
        for message in group {
            run.alone(&mut tx, handler, message).await;
        }
        counts.push(run.taken - before);
    }
    let outcome = run.finish(&mut tx, tables).await;
    tx.rollback().await.unwrap();
    OneByOne {
        outcome,
        statements: counts,
    }
}

/// Each group through `apply_all` in a savepoint; a failed group is rolled back and its
/// messages applied one at a time.
pub async fn grouped<H: TxHandler>(
    pool: &PgPool,
    handler: &H,
    groups: &[Vec<Envelope>],
    tables: Tables,
) -> Grouped {
    let statements = Statements::default();
    let _counting = tracing::subscriber::set_default(statements.clone());
    let mut tx = pool.begin().await.unwrap();
    let mut run = Run::new(statements.clone());
    let mut fell_back = Vec::new();
    let mut counts = Vec::new();
    for (n, group) in groups.iter().enumerate() {
        let messages: Vec<&Envelope> = group.iter().collect();
        let mut savepoint = Connection::begin(&mut *tx).await.unwrap();
        let before = statements.count();
        let result = handler.apply_all(&mut savepoint, &messages).await;
        let taken = statements.count() - before;
        match result {
            Ok(replies) => {
                savepoint.commit().await.unwrap();
                counts.push(taken);
                run.replies.extend(replies.iter().map(Reply::from));
                check(group, &replies);
                run.seen += group.len();
            }
            Err(error) => {
                eprintln!("group {n} failed ({error}); one at a time");
                savepoint.rollback().await.unwrap();
                fell_back.push(n);
                for message in group {
                    run.alone(&mut tx, handler, message).await;
                }
            }
        }
    }
    let outcome = run.finish(&mut tx, tables).await;
    tx.rollback().await.unwrap();
    Grouped {
        outcome,
        fell_back,
        statements: counts,
    }
}

/// Runs both and checks they agree, and that a group failed exactly when one of its messages
/// fails alone (so no group falls back for nothing, and none lets a refused message through).
pub async fn compare<H: TxHandler>(
    pool: &PgPool,
    handler: &H,
    groups: &[Vec<Envelope>],
    tables: Tables,
) -> Grouped {
    let expected = one_by_one(pool, handler, groups, tables).await.outcome;
    let actual = grouped(pool, handler, groups, tables).await;
    assert_eq!(actual.outcome.tables, expected.tables, "tables differ");
    assert_eq!(
        actual.outcome.replies.len(),
        expected.replies.len(),
        "reply counts differ"
    );
    for (n, (got, want)) in actual
        .outcome
        .replies
        .iter()
        .zip(&expected.replies)
        .enumerate()
    {
        assert_eq!(got, want, "reply {n} differs");
    }
    assert_eq!(actual.outcome.refused, expected.refused);
    let mut start = 0;
    let failing: Vec<usize> = groups
        .iter()
        .enumerate()
        .filter_map(|(n, group)| {
            let range = start..start + group.len();
            start = range.end;
            expected
                .refused
                .iter()
                .any(|r| range.contains(r))
                .then_some(n)
        })
        .collect();
    assert_eq!(actual.fell_back, failing, "groups that fell back");
    actual
}

/// Runs `group` through `apply_all` while another transaction has applied `first` and not yet
/// committed it; commits that one as soon as the group waits for one of its locks.
pub async fn racing<H: TxHandler + Clone>(
    pool: &PgPool,
    handler: &H,
    first: &Envelope,
    group: Vec<Envelope>,
) -> Result<Vec<Envelope>, HandlerError> {
    let mut other = pool.begin().await.unwrap();
    handler.apply(&mut other, first).await.unwrap();
    let task = tokio::spawn({
        let pool = pool.clone();
        let handler = handler.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let messages: Vec<&Envelope> = group.iter().collect();
            let result = handler.apply_all(&mut tx, &messages).await;
            if result.is_ok() {
                tx.commit().await.unwrap();
            }
            result
        }
    });
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    other.commit().await.unwrap();
    task.await.unwrap()
}

#[derive(Debug)]
struct Run {
    replies: Vec<Reply>,
    refused: Vec<usize>,
    /// Messages applied so far.
    seen: usize,
    statements: Statements,
    /// Statements that `apply` took so far.
    taken: usize,
}

impl Run {
    fn new(statements: Statements) -> Self {
        Self {
            replies: Vec::new(),
            refused: Vec::new(),
            seen: 0,
            statements,
            taken: 0,
        }
    }

    async fn alone<H: TxHandler>(
        &mut self,
        tx: &mut PgConnection,
        handler: &H,
        message: &Envelope,
    ) {
        let mut savepoint = Connection::begin(&mut *tx).await.unwrap();
        let before = self.statements.count();
        let result = handler.apply(&mut savepoint, message).await;
        self.taken += self.statements.count() - before;
        match result {
            Ok(replies) => {
                savepoint.commit().await.unwrap();
                check(std::slice::from_ref(message), &replies);
                self.replies.extend(replies.iter().map(Reply::from));
            }
            Err(HandlerError::Permanent(_)) => {
                savepoint.rollback().await.unwrap();
                self.refused.push(self.seen);
            }
            Err(error) => panic!("no transient failure expected here: {error}"),
        }
        self.seen += 1;
    }

    async fn finish(self, tx: &mut PgConnection, tables: Tables) -> Outcome {
        let mut dump = serde_json::Map::new();
        for (table, key) in tables {
            let rows: Value = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT COALESCE(jsonb_agg(to_jsonb(t) - 'created_at' - 'updated_at' \
                 ORDER BY t.{key}), '[]') FROM {table} t"
            )))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            dump.insert((*table).to_owned(), rows);
        }
        Outcome {
            replies: self.replies,
            refused: self.refused,
            tables: Value::Object(dump),
        }
    }
}

/// Every reply passes its schema and answers one of the messages it was applied for, in
/// the order of those messages.
fn check(causes: &[Envelope], replies: &[Envelope]) {
    let mut position = 0;
    for reply in replies {
        Schemas::embedded()
            .validate(&reply.message_type, &reply.payload)
            .unwrap();
        let cause = causes[position..]
            .iter()
            .position(|c| Some(c.message_id) == reply.causation_id)
            .unwrap_or_else(|| panic!("{reply:?} answers none of the messages, in order"));
        position += cause;
        assert_eq!(reply.correlation_id, causes[position].correlation_id);
    }
}

/// Counts the statements sqlx runs on this thread (its `sqlx::query` events).
#[derive(Debug, Default, Clone)]
pub struct Statements(Arc<AtomicUsize>);

impl Statements {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Subscriber for Statements {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "sqlx::query"
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if event.metadata().target() == "sqlx::query" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
