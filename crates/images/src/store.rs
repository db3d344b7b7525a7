//! The image store: originals and variants as files under one root directory, addressed by
//! relative keys (`images/<image_id>/original`, `images/<image_id>/<slug>.<ext>`). Messages
//! carry keys, never bytes; the gateway writes originals and serves variants from here.
//!
//! Keys are checked before they touch the file system: `[A-Za-z0-9._/-]` only (the
//! schemas' pattern), relative, no empty, `.` or `..` segment, and no segment starting with
//! `.` (those names are kept for the store's temporary files). Writes go to a temporary file
//! in the target directory, are synced, then renamed over the target, so a reader sees the
//! old file or the new one, never half of one. File system calls run on tokio's blocking
//! pool, so the store never blocks the async runtime.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

use crate::spec::{OutputFormat, VariantSpec};

/// The longest key (the schemas' `maxLength`).
pub const MAX_KEY_LEN: usize = 500;

/// The file name of an original inside its image's folder.
const ORIGINAL: &str = "original";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    /// The key is malformed or could escape the store's root: the caller's mistake.
    #[error("invalid image store key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("{key} is not in the image store")]
    NotFound { key: String },
    /// The file system failed (disk full, permissions, a lost mount): maybe worth a retry.
    #[error("image store: cannot {action} {key}: {source}")]
    Io {
        action: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },
}

impl ImageStoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// The key of an image's original.
pub fn original_key(image_id: Uuid) -> String {
    format!("images/{image_id}/{ORIGINAL}")
}

/// The key of one variant of an image.
pub fn variant_key(image_id: Uuid, spec: &VariantSpec) -> String {
    format!("images/{image_id}/{}.{}", spec.slug(), spec.extension())
}

/// The media type to serve a variant of `format` with.
pub fn content_type(format: OutputFormat) -> &'static str {
    format.content_type()
}

/// Checks `key` and returns it as a relative path.
fn checked(key: &str) -> Result<&Path, ImageStoreError> {
    let invalid = |reason| ImageStoreError::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    if key.is_empty() {
        return Err(invalid("it is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid("it is longer than 500 characters"));
    }
    if key.contains('\\') {
        return Err(invalid("it contains a backslash"));
    }
    if key.starts_with('/') {
        return Err(invalid("it is an absolute path"));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    {
        return Err(invalid(
            "only A-Z, a-z, 0-9, '.', '_', '-' and '/' are allowed",
        ));
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return Err(invalid("it has an empty path segment"));
        }
        if segment == "." || segment == ".." {
            return Err(invalid("it has a '.' or '..' segment"));
        }
        if segment.starts_with('.') {
            return Err(invalid("a path segment starts with '.'"));
        }
    }
    Ok(Path::new(key))
}

/// Files on a local (or mounted) directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: Arc<PathBuf>,
}

impl ImageStore {
    /// A store rooted at `root`, which is created on the first write if it does not exist.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Arc::new(root.into()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `key` lives on disk.
    pub fn path(&self, key: &str) -> Result<PathBuf, ImageStoreError> {
        Ok(self.root.join(checked(key)?))
    }

    /// [`original_key`], for callers holding the type.
    pub fn original_key(image_id: Uuid) -> String {
        original_key(image_id)
    }

    /// [`variant_key`], for callers holding the type.
    pub fn variant_key(image_id: Uuid, spec: &VariantSpec) -> String {
        variant_key(image_id, spec)
    }

    /// Writes `bytes` under `key` atomically, creating directories as needed.
    pub async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ImageStoreError> {
        let path = self.path(key)?;
        // The blocking pool needs owned data; one copy is cheap next to the disk write.
        let bytes = bytes.to_vec();
        self.blocking(key, "write", move || write_atomically(&path, &bytes))
            .await
    }

    /// The bytes stored under `key`.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>, ImageStoreError> {
        let path = self.path(key)?;
        self.blocking(key, "read", move || std::fs::read(path))
            .await
    }

    /// The size in bytes of what is stored under `key`, without reading it.
    pub async fn size(&self, key: &str) -> Result<u64, ImageStoreError> {
        let path = self.path(key)?;
        self.blocking(key, "inspect", move || {
            std::fs::metadata(path).map(|meta| meta.len())
        })
        .await
    }

    /// Removes `key`; `false` when there was nothing to remove.
    pub async fn delete(&self, key: &str) -> Result<bool, ImageStoreError> {
        let path = self.path(key)?;
        let removed = self
            .blocking(key, "delete", move || std::fs::remove_file(path))
            .await;
        match removed {
            Ok(()) => Ok(true),
            Err(ImageStoreError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Removes everything in an image's folder but its original (left-over temporary files
    /// included) and returns how many variants were removed; 0 when there were none.
    pub async fn delete_variants(&self, image_id: Uuid) -> Result<u32, ImageStoreError> {
        let key = format!("images/{image_id}");
        let dir = self.path(&key)?;
        let deleted = self
            .blocking(&key, "delete the variants in", move || {
                remove_all_but_original(&dir)
            })
            .await;
        match deleted {
            Err(ImageStoreError::NotFound { .. }) => Ok(0),
            other => other,
        }
    }

    /// Runs a file system call on the blocking pool, naming `key` in its error.
    async fn blocking<T: Send + 'static>(
        &self,
        key: &str,
        action: &'static str,
        call: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> Result<T, ImageStoreError> {
        let result = tokio::task::spawn_blocking(call)
            .await
            .unwrap_or_else(|join| Err(io::Error::other(join)));
        result.map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ImageStoreError::NotFound {
                    key: key.to_owned(),
                }
            } else {
                ImageStoreError::Io {
                    action,
                    key: key.to_owned(),
                    source,
                }
            }
        })
    }
}

/// Temporary file in the target's directory (so the rename stays on one file system),
/// synced before the rename; the directory is synced after it, so the new name survives a
/// crash once this returns.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;

    let dir = path.parent().ok_or_else(|| io::Error::other("no parent"))?;
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("file");
    let temporary = dir.join(format!(".{name}.{}.tmp", Uuid::now_v7()));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        // Best effort: a left-over temporary file is removed by `delete_variants` later.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

fn remove_all_but_original(dir: &Path) -> io::Result<u32> {
    let mut deleted = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ORIGINAL || !entry.file_type()?.is_file() {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {}
            // Removed concurrently: the effect is the same.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if !name.to_string_lossy().starts_with('.') {
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::spec::parse;

    /// A store in a fresh directory, removed when dropped.
    struct Scratch(ImageStore);

    impl Scratch {
        fn new() -> Self {
            let root = std::env::temp_dir().join(format!("warren-store-{}", Uuid::now_v7()));
            Self(ImageStore::new(root))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.root());
        }
    }

    #[test]
    fn keys_are_relative_and_plain() {
        let id = Uuid::nil();
        assert_eq!(ImageStore::original_key(id), original_key(id));
        assert_eq!(
            original_key(id),
            "images/00000000-0000-0000-0000-000000000000/original"
        );
        assert_eq!(
            variant_key(id, &parse("grayscale|rotate:90@webp").unwrap()),
            "images/00000000-0000-0000-0000-000000000000/grayscale_rotate-90.webp"
        );
        assert_eq!(
            variant_key(id, &parse("blur:2.5@jpeg").unwrap()),
            "images/00000000-0000-0000-0000-000000000000/blur-2.5.jpg"
        );
        for key in [original_key(id), "a".into(), "a/b-c_d.e".into()] {
            assert!(checked(&key).is_ok(), "{key}");
        }
    }

    #[test]
    fn dangerous_keys_are_refused() {
        for key in [
            "",
            "/etc/passwd",
            "../secret",
            "images/../../secret",
            "images/./x",
            "images//x",
            "images/x/",
            "images\\x",
            "images/x y",
            "images/é",
            "images/.hidden",
            "images/x?y",
            "images/%2e%2e",
            "C:x",
        ] {
            let error = checked(key).unwrap_err();
            assert!(
                matches!(error, ImageStoreError::InvalidKey { .. }),
                "{key}: {error}"
            );
        }
        assert!(checked(&"a".repeat(501)).is_err());
    }

    #[tokio::test]
    async fn put_get_delete_round_trip() {
        let scratch = Scratch::new();
        let store = &scratch.0;
        let key = "images/x/original";
        assert!(store.get(key).await.unwrap_err().is_not_found());
        store.put(key, b"one").await.unwrap();
        assert_eq!(store.get(key).await.unwrap(), b"one");
        assert_eq!(store.size(key).await.unwrap(), 3);
        store.put(key, b"second").await.unwrap();
        assert_eq!(store.get(key).await.unwrap(), b"second");
        assert!(store.path(key).unwrap().starts_with(store.root()));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(store.path("images/x").unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["original"]);
        assert!(store.delete(key).await.unwrap());
        assert!(!store.delete(key).await.unwrap());
        assert!(store.put("../x", b"").await.is_err());
    }

    #[tokio::test]
    async fn delete_variants_keeps_the_original() {
        let scratch = Scratch::new();
        let store = &scratch.0;
        let id = Uuid::now_v7();
        assert_eq!(store.delete_variants(id).await.unwrap(), 0);
        store.put(&original_key(id), b"o").await.unwrap();
        assert_eq!(store.delete_variants(id).await.unwrap(), 0);
        for spec in ["thumbnail:1", "grayscale@webp"] {
            let key = variant_key(id, &parse(spec).unwrap());
            store.put(&key, b"v").await.unwrap();
        }
        // A temporary file left by a crash goes too, uncounted.
        let dir = store.path(&format!("images/{id}")).unwrap();
        std::fs::write(dir.join(".thumbnail-1.png.x.tmp"), b"t").unwrap();
        assert_eq!(store.delete_variants(id).await.unwrap(), 2);
        assert_eq!(store.delete_variants(id).await.unwrap(), 0);
        assert_eq!(store.get(&original_key(id)).await.unwrap(), b"o");
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
    }
}
