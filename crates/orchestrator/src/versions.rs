//! Saga definition versions: every saga advances by the definition it started under.
//!
//! A version is a definition's [`Definition::digest`]. New sagas start on the definitions loaded
//! now (the current ones); a saga started under another version keeps it to its end, so a step
//! added, removed or reordered while it runs cannot move it onto other steps. Each version a
//! saga starts under is written to `sagas.definitions` within that saga's own transaction, so
//! an orchestrator restarted on a changed file reads back the old one when a saga needs it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use saga::Definition;
use saga::machine::Saga;
use sqlx::{PgConnection, PgPool};

use crate::EngineError;

#[derive(Debug)]
pub struct Versions {
    /// The definitions loaded now, by name: new sagas start on these.
    current: BTreeMap<String, Arc<Definition>>,
    /// Every version at hand, by digest: the current ones, and older ones read back from
    /// `sagas.definitions` the first time a saga needs them.
    known: RwLock<HashMap<String, Arc<Definition>>>,
    /// Digests of current definitions known to be committed in `sagas.definitions`.
    stored: Mutex<HashSet<String>>,
}

impl Versions {
    pub fn new(definitions: Vec<Definition>) -> Self {
        let current: BTreeMap<String, Arc<Definition>> = definitions
            .into_iter()
            .map(|d| (d.name.clone(), Arc::new(d)))
            .collect();
        let known = current.values().map(|d| (d.digest(), d.clone())).collect();
        Self {
            current,
            known: RwLock::new(known),
            stored: Mutex::new(HashSet::new()),
        }
    }

    /// The current definition of this name: the one new sagas start on.
    pub fn current(&self, name: &str) -> Option<&Arc<Definition>> {
        self.current.get(name)
    }

    pub fn current_all(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.current.values()
    }

    /// Every version at hand (the current ones and those read back so far).
    pub fn known(&self) -> Vec<Arc<Definition>> {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        known.values().cloned().collect()
    }

    /// The definition a saga advances by: the version it started under, read back from the
    /// database the first time it is needed; the current one of its name for a saga started
    /// before versions were recorded.
    pub async fn of(
        &self,
        db: &mut PgConnection,
        saga: &Saga,
    ) -> Result<Arc<Definition>, EngineError> {
        let Some(digest) = &saga.definition_version else {
            return self
                .current(&saga.definition)
                .cloned()
                .ok_or_else(|| EngineError::UnknownDefinition(saga.definition.clone()));
        };
        if let Some(definition) = self.cached(digest) {
            return Ok(definition);
        }
        let definition = load(db, &saga.definition, digest).await?.ok_or_else(|| {
            EngineError::UnknownVersion {
                name: saga.definition.clone(),
                digest: digest.clone(),
            }
        })?;
        let definition = Arc::new(definition);
        self.known
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest.clone(), definition.clone());
        Ok(definition)
    }

    fn cached(&self, digest: &str) -> Option<Arc<Definition>> {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        known.get(digest).cloned()
    }

    /// Makes sure the version a saga starts under (`digest`, the one its start recorded) is in
    /// `sagas.definitions` once `tx` commits. After the first commit that wrote or found it,
    /// this costs a set lookup.
    pub async fn record(
        &self,
        tx: &mut PgConnection,
        definition: &Definition,
        digest: &str,
    ) -> Result<(), EngineError> {
        if self
            .stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(digest)
        {
            return Ok(());
        }
        let existed = store(tx, definition, digest).await?;
        if existed {
            // Committed by an earlier transaction: this one cannot roll it back.
            self.stored
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(digest.to_owned());
        }
        Ok(())
    }

    /// At start-up: writes the current versions to `sagas.definitions` and reads back every
    /// version that still has sagas running, so their reply types are bound and their first
    /// reply finds them at hand. Returns the versions read back.
    pub async fn register(&self, pool: &PgPool) -> Result<Vec<String>, EngineError> {
        let mut tx = pool.begin().await?;
        for definition in self.current.values() {
            store(&mut tx, definition, &definition.digest()).await?;
        }
        tx.commit().await?;
        self.stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(self.current.values().map(|d| d.digest()));
        let running: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT definition, definition_version FROM sagas.sagas \
             WHERE status IN ('running', 'compensating') AND definition_version IS NOT NULL",
        )
        .fetch_all(pool)
        .await?;
        let mut loaded = Vec::new();
        let mut db = pool.acquire().await?;
        for (name, digest) in running {
            if self.cached(&digest).is_some() {
                continue;
            }
            match load(&mut db, &name, &digest).await? {
                Some(definition) => {
                    loaded.push(definition.version_name());
                    self.known
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(digest, Arc::new(definition));
                }
                None => tracing::error!(
                    %name, %digest,
                    "sagas run on a definition version that sagas.definitions does not hold"
                ),
            }
        }
        Ok(loaded)
    }
}

/// Writes a version unless it is there; says whether it was there already (committed by an
/// earlier transaction, or by a concurrent one this statement waited for).
async fn store(
    tx: &mut PgConnection,
    definition: &Definition,
    digest: &str,
) -> Result<bool, EngineError> {
    let body = serde_json::to_value(definition).expect("a definition serializes");
    let existed: bool = sqlx::query_scalar(
        "WITH written AS ( \
             INSERT INTO sagas.definitions (name, digest, label, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name, digest) DO NOTHING RETURNING 1) \
         SELECT NOT EXISTS (SELECT 1 FROM written)",
    )
    .bind(&definition.name)
    .bind(digest)
    .bind(definition.version.as_deref())
    .bind(body)
    .fetch_one(tx)
    .await?;
    Ok(existed)
}

/// Reads one version back; refuses a stored body whose digest is not the one it is filed under.
pub async fn load(
    db: &mut PgConnection,
    name: &str,
    digest: &str,
) -> Result<Option<Definition>, EngineError> {
    let body: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT body FROM sagas.definitions WHERE name = $1 AND digest = $2")
            .bind(name)
            .bind(digest)
            .fetch_optional(db)
            .await?;
    let Some(body) = body else {
        return Ok(None);
    };
    let definition: Definition = serde_json::from_value(body)
        .map_err(|e| EngineError::CorruptVersion(format!("{name}@{digest} does not parse: {e}")))?;
    let actual = definition.digest();
    if actual != digest {
        return Err(EngineError::CorruptVersion(format!(
            "{name}@{digest} stored with the content of {name}@{actual}"
        )));
    }
    Ok(Some(definition))
}

/// Every stored version, by name and digest (for replaying logs by the version they ran on).
pub async fn load_all(
    db: &mut PgConnection,
) -> Result<BTreeMap<(String, String), Definition>, EngineError> {
    let names: Vec<(String, String)> =
        sqlx::query_as("SELECT name, digest FROM sagas.definitions ORDER BY name, first_used_at")
            .fetch_all(&mut *db)
            .await?;
    let mut all = BTreeMap::new();
    for (name, digest) in names {
        if let Some(definition) = load(db, &name, &digest).await? {
            all.insert((name, digest), definition);
        }
    }
    Ok(all)
}
