// Each test file uses a different part of this module.
#![allow(dead_code)]

//! Drives a participant's handler as `store::Transactional` does (one transaction per
//! message, committed only on success), minus the broker and the inbox, so every call is
//! a delivery under a fresh message id: exactly what a re-sent command looks like.

use bus::HandlerError;
use contracts::{Envelope, Message, Schemas};
use sqlx::PgPool;
use store::TxHandler;
use uuid::Uuid;

/// A command (or event) as the orchestrator sends it: fresh message id, a saga id.
pub fn send<M: Message>(message: &M) -> Envelope {
    Envelope::new("test", message).with_correlation(Uuid::now_v7())
}

/// Applies `message` in a transaction of its own and commits on success; an error rolls
/// back. Transient errors are retried at once, as the bus would after a back-off. Every
/// reply must pass its schema and carry the saga id and causation of `message`.
pub async fn apply<H: TxHandler>(
    pool: &PgPool,
    handler: &H,
    message: &Envelope,
) -> Result<Vec<Envelope>, HandlerError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut tx = pool.begin().await.unwrap();
        match handler.apply(&mut tx, message).await {
            Ok(replies) => {
                tx.commit().await.unwrap();
                for reply in &replies {
                    Schemas::embedded()
                        .validate(&reply.message_type, &reply.payload)
                        .unwrap();
                    assert_eq!(reply.correlation_id, message.correlation_id);
                    assert_eq!(reply.causation_id, Some(message.message_id));
                }
                return Ok(replies);
            }
            Err(HandlerError::Transient(reason)) if attempts < 10 => {
                drop(tx);
                eprintln!("transient failure, retrying: {reason}");
            }
            Err(error) => return Err(error),
        }
    }
}

/// The one reply, decoded as `M` (fails the test if it is anything else).
pub fn only<M: Message>(replies: &[Envelope]) -> M {
    assert_eq!(replies.len(), 1, "expected one reply, got {replies:?}");
    replies[0]
        .decode::<M>()
        .unwrap_or_else(|e| panic!("expected {}, got {:?}: {e}", M::TYPE, replies[0]))
}

/// Sends `message` and returns its one reply as `M`.
pub async fn ask<H: TxHandler, M: Message, R: Message>(
    pool: &PgPool,
    handler: &H,
    message: &M,
) -> R {
    let replies = apply(pool, handler, &send(message)).await.unwrap();
    only(&replies)
}

/// Expects the handler to refuse `message` for good (the bus would park it).
pub async fn parked<H: TxHandler>(pool: &PgPool, handler: &H, message: &Envelope) -> String {
    match apply(pool, handler, message).await {
        Err(HandlerError::Permanent(reason)) => reason,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

/// A small deterministic generator, so a failing run can be replayed from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent`%.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
