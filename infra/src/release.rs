//! A release: the three service binaries plus the instance bootstrap script and systemd unit,
//! uploaded under `releases/<id>/` in the artifact bucket with a manifest (`manifest.sha256`,
//! `sha256sum` format: one `<sha256>  <key>` line per file). The id is the start of the
//! manifest's own SHA-256, and the whole SHA-256 goes into the application stack
//! (`ReleaseManifestSha256`): an instance checks the manifest against it and every file against
//! the manifest before it runs anything, so what runs is what the stack names even if the bucket
//! is tampered with. Content addressing makes an upload idempotent, lets a deployment name
//! exactly what runs, and leaves every earlier release in place for a roll-back.

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
/// The per-file SHA-256 list, uploaded last: once it is there, the release is complete.
pub const MANIFEST_KEY: &str = "manifest.sha256";

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
    #[error(
        "release `{0}` is not a release's manifest SHA-256 (64 lower-case hex digits, as the deploy \
         that uploaded it printed; the 16-digit id alone is only a 64-bit check)"
    )]
    BadId(String),
    #[error("release `{id}` in the bucket is not that release: {problem}")]
    Tampered { id: String, problem: String },
}

/// The files of one release, in memory (the binaries are a few tens of MB together).
#[derive(Debug, Clone)]
pub struct Release {
    id: String,
    /// (key below the release prefix, contents)
    files: Vec<(String, Vec<u8>)>,
    manifest: String,
}

/// What the application stack needs to run a release uploaded to the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub id: String,
    /// SHA-256 of `manifest.sha256`, in hex: the stack's `ReleaseManifestSha256`.
    pub manifest_sha256: String,
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
        // Each file's own hash, so moving bytes between files changes the manifest and the id.
        let manifest: String = files
            .iter()
            .map(|(key, bytes)| format!("{}  {key}\n", sha256_hex(bytes)))
            .collect();
        let id = id_of(&manifest);
        Self { id, files, manifest }
    }

    /// 16 hex digits of the manifest's hash.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The manifest, in `sha256sum --check` format.
    pub fn manifest(&self) -> &str {
        &self.manifest
    }

    /// What the application stack is given.
    pub fn uploaded(&self) -> Uploaded {
        Uploaded {
            id: self.id.clone(),
            manifest_sha256: sha256_hex(self.manifest.as_bytes()),
        }
    }

    /// `releases/<id>`, the template's `ReleasePrefix`.
    pub fn prefix(&self) -> String {
        prefix(&self.id)
    }

    /// Uploads every file not already in the bucket, the manifest last.
    #[tracing::instrument(skip_all, fields(release = %self.id, bucket = bucket))]
    pub async fn upload(&self, s3: &aws_sdk_s3::Client, bucket: &str) -> Result<Uploaded, ReleaseError> {
        let manifest = (MANIFEST_KEY.to_owned(), self.manifest.as_bytes().to_vec());
        for (name, bytes) in self.files.iter().chain([&manifest]) {
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
        Ok(self.uploaded())
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A release's id: the first 16 hex digits of its manifest's SHA-256.
fn id_of(manifest: &str) -> String {
    sha256_hex(manifest.as_bytes())[..16].to_owned()
}

/// The keys a complete release holds besides its manifest.
fn release_keys() -> Vec<String> {
    SERVICES
        .iter()
        .map(|s| format!("bin/{s}"))
        .chain([BOOTSTRAP_KEY.to_owned(), UNIT_KEY.to_owned()])
        .collect()
}

/// `releases/<id>` for a release id checked to be one.
pub fn prefix(id: &str) -> String {
    format!("releases/{id}")
}

/// Checks that an earlier release is complete in the bucket (for a roll-back to it), named by
/// its manifest's full SHA-256 (what the deploy that uploaded it printed): the manifest hashes to
/// exactly that, so whoever can write to the bucket cannot substitute another one, and lists
/// exactly a release's files, each of which is there. The files' contents are the instances' to
/// check, against the manifest.
pub async fn verify_uploaded(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    manifest_sha256: &str,
) -> Result<Uploaded, ReleaseError> {
    let valid = manifest_sha256.len() == 64
        && manifest_sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return Err(ReleaseError::BadId(manifest_sha256.to_owned()));
    }
    let id = &manifest_sha256[..16];
    let manifest_key = format!("{}/{MANIFEST_KEY}", prefix(id));
    let manifest = match s3.get_object().bucket(bucket).key(&manifest_key).send().await {
        Ok(object) => object
            .body
            .collect()
            .await
            .map_err(|e| ReleaseError::S3 {
                operation: "GetObject",
                bucket: bucket.to_owned(),
                key: manifest_key.clone(),
                detail: utility::error::chain(&e),
            })?
            .into_bytes(),
        Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
            return Err(ReleaseError::S3 {
                operation: "GetObject",
                bucket: bucket.to_owned(),
                key: manifest_key,
                detail: "not found: that release was never uploaded here".to_owned(),
            });
        }
        Err(err) => return Err(s3_error("GetObject", bucket, &manifest_key, &err)),
    };
    let tampered = |problem: String| ReleaseError::Tampered {
        id: id.to_owned(),
        problem,
    };
    let manifest = String::from_utf8(manifest.to_vec()).map_err(|_| tampered("its manifest is not text".into()))?;
    let actual = sha256_hex(manifest.as_bytes());
    if actual != manifest_sha256 {
        return Err(tampered(format!("its manifest hashes to {actual}")));
    }
    let listed: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(_, k)| k)
        .collect();
    if listed != release_keys() {
        return Err(tampered(format!("its manifest lists {listed:?}")));
    }
    for name in listed {
        let key = format!("{}/{name}", prefix(id));
        if !object_exists(s3, bucket, &key).await? {
            return Err(ReleaseError::S3 {
                operation: "HeadObject",
                bucket: bucket.to_owned(),
                key,
                detail: "not found: the release is incomplete".to_owned(),
            });
        }
    }
    Ok(Uploaded {
        id: id.to_owned(),
        manifest_sha256: sha256_hex(manifest.as_bytes()),
    })
}

/// Deletes every object in the bucket, every version of it and every delete marker (the bucket
/// is versioned, and must be empty before its stack can delete it).
#[tracing::instrument(skip_all, fields(bucket = bucket))]
pub async fn empty_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> Result<usize, ReleaseError> {
    let mut deleted = 0;
    loop {
        let listed = s3
            .list_object_versions()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| s3_error("ListObjectVersions", bucket, "", &e))?;
        let versions = listed.versions().iter().map(|v| (v.key(), v.version_id()));
        let markers = listed.delete_markers().iter().map(|m| (m.key(), m.version_id()));
        let entries: Vec<(String, Option<String>)> = versions
            .chain(markers)
            .filter_map(|(key, version)| Some((key?.to_owned(), version.map(str::to_owned))))
            .collect();
        if entries.is_empty() {
            return Ok(deleted);
        }
        for (key, version) in entries {
            s3.delete_object()
                .bucket(bucket)
                .key(&key)
                .set_version_id(version)
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

    /// The manifest is what `sha256sum --check` reads on the instance, and the id and the
    /// stack's `ReleaseManifestSha256` both come from its hash.
    #[test]
    fn the_manifest_lists_each_file_and_names_the_release() {
        let a = release(&[("bin/gateway", "one"), ("ec2/bootstrap.sh", "two")]);
        let one = sha256_hex(b"one");
        assert_eq!(one, "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed");
        assert_eq!(
            a.manifest(),
            format!("{one}  bin/gateway\n{}  ec2/bootstrap.sh\n", sha256_hex(b"two"))
        );
        let uploaded = a.uploaded();
        assert_eq!(uploaded.manifest_sha256, sha256_hex(a.manifest().as_bytes()));
        assert_eq!(uploaded.id, uploaded.manifest_sha256[..16]);
        assert_eq!(uploaded.id, a.id());
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
