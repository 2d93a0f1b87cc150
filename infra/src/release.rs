//! A release: the three service binaries plus the instance bootstrap script and systemd unit,
//! named by a hash of their contents and uploaded under `releases/<id>/` in the artifact bucket.
//! Content addressing makes an upload idempotent, lets a deployment name exactly what runs, and
//! leaves every earlier release in place for a roll-back.

use crate::sdk_error::describe;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The services a release carries, by binary name.
pub const SERVICES: [&str; 3] = ["gateway", "customer-api", "transaction-api"];

/// The instance bootstrap script and systemd unit (`infra/ec2/`), embedded at build time so a
/// release always carries the versions this `sagactl` was built with.
pub const BOOTSTRAP: &str = include_str!("../ec2/bootstrap.sh");
pub const UNIT: &str = include_str!("../ec2/saga-service@.service");
pub const BOOTSTRAP_KEY: &str = "ec2/bootstrap.sh";
pub const UNIT_KEY: &str = "ec2/saga-service@.service";

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("cannot read {path}: {source} (build the binaries first: cargo build --release --bins)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("S3 {operation} of s3://{bucket}/{key} failed: {detail}")]
    S3 {
        operation: &'static str,
        bucket: String,
        key: String,
        detail: String,
    },
    #[error("release `{0}` is not a release id (16 lower-case hex digits)")]
    BadId(String),
}

/// The files of one release, in memory (the binaries are a few tens of MB together).
#[derive(Debug, Clone)]
pub struct Release {
    id: String,
    /// (key below the release prefix, contents)
    files: Vec<(String, Vec<u8>)>,
}

impl Release {
    /// Reads the service binaries from `bin_dir` (e.g. `target/release`).
    pub fn collect(bin_dir: &Path) -> Result<Self, ReleaseError> {
        let mut files = Vec::new();
        for service in SERVICES {
            let path = bin_dir.join(service);
            let bytes = std::fs::read(&path).map_err(|source| ReleaseError::Read { path, source })?;
            files.push((format!("bin/{service}"), bytes));
        }
        files.push((BOOTSTRAP_KEY.to_owned(), BOOTSTRAP.as_bytes().to_vec()));
        files.push((UNIT_KEY.to_owned(), UNIT.as_bytes().to_vec()));
        Ok(Self::from_files(files))
    }

    fn from_files(files: Vec<(String, Vec<u8>)>) -> Self {
        let mut hash = Sha256::new();
        for (key, bytes) in &files {
            // Length-prefixed, so moving bytes between files changes the id.
            hash.update((key.len() as u64).to_be_bytes());
            hash.update(key.as_bytes());
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        }
        let digest = hash.finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self { id, files }
    }

    /// 16 hex digits of the content hash.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `releases/<id>`, the template's `ReleasePrefix`.
    pub fn prefix(&self) -> String {
        prefix(&self.id)
    }

    /// Uploads every file not already in the bucket.
    #[tracing::instrument(skip_all, fields(release = %self.id, bucket = bucket))]
    pub async fn upload(&self, s3: &aws_sdk_s3::Client, bucket: &str) -> Result<(), ReleaseError> {
        for (name, bytes) in &self.files {
            let key = format!("{}/{name}", self.prefix());
            if object_exists(s3, bucket, &key).await? {
                continue;
            }
            s3.put_object()
                .bucket(bucket)
                .key(&key)
                .body(ByteStream::from(bytes.clone()))
                .send()
                .await
                .map_err(|e| s3_error("PutObject", bucket, &key, &e))?;
            tracing::info!(key, bytes = bytes.len(), "uploaded");
        }
        Ok(())
    }
}

/// `releases/<id>` for a release id checked to be one.
pub fn prefix(id: &str) -> String {
    format!("releases/{id}")
}

/// Checks that an earlier release is complete in the bucket (for a roll-back to it).
pub async fn verify_uploaded(s3: &aws_sdk_s3::Client, bucket: &str, id: &str) -> Result<(), ReleaseError> {
    let valid = id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return Err(ReleaseError::BadId(id.to_owned()));
    }
    let keys = SERVICES
        .iter()
        .map(|s| format!("bin/{s}"))
        .chain([BOOTSTRAP_KEY.to_owned(), UNIT_KEY.to_owned()]);
    for name in keys {
        let key = format!("{}/{name}", prefix(id));
        if !object_exists(s3, bucket, &key).await? {
            return Err(ReleaseError::S3 {
                operation: "HeadObject",
                bucket: bucket.to_owned(),
                key,
                detail: "not found: that release was never uploaded here".to_owned(),
            });
        }
    }
    Ok(())
}

/// Deletes every object in the bucket (it must be empty before its stack can delete it).
#[tracing::instrument(skip_all, fields(bucket = bucket))]
pub async fn empty_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<usize, ReleaseError> {
    let mut deleted = 0;
    loop {
        let listed = s3
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| s3_error("ListObjectsV2", bucket, "", &e))?;
        let keys: Vec<String> = listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        if keys.is_empty() {
            return Ok(deleted);
        }
        for key in keys {
            s3.delete_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| s3_error("DeleteObject", bucket, &key, &e))?;
            deleted += 1;
        }
    }
}

async fn object_exists(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<bool, ReleaseError> {
    match s3.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(true),
        Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
        Err(err) => Err(s3_error("HeadObject", bucket, key, &err)),
    }
}

fn s3_error<E, R>(operation: &'static str, bucket: &str, key: &str, err: &SdkError<E, R>) -> ReleaseError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    ReleaseError::S3 {
        operation,
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        detail: describe(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(files: &[(&str, &str)]) -> Release {
        Release::from_files(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn the_id_follows_the_contents() {
        let a = release(&[("bin/gateway", "one"), ("bin/customer-api", "two")]);
        assert_eq!(a.id().len(), 16);
        assert!(a.id().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            a.id(),
            release(&[("bin/gateway", "one"), ("bin/customer-api", "two")]).id()
        );
        assert_ne!(
            a.id(),
            release(&[("bin/gateway", "one"), ("bin/customer-api", "twO")]).id()
        );
        // The same bytes split differently between files are a different release.
        assert_ne!(
            a.id(),
            release(&[("bin/gateway", "onet"), ("bin/customer-api", "wo")]).id()
        );
        assert_eq!(a.prefix(), format!("releases/{}", a.id()));
    }

    #[test]
    fn missing_binaries_name_the_file_and_the_build_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = Release::collect(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("gateway") && err.contains("cargo build --release"),
            "{err}"
        );
    }
}
