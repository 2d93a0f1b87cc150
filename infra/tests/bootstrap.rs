//! `infra/ec2/bootstrap.sh` run for real, in a scratch root (`SAGA_ROOT`) with stand-ins for the
//! commands that would reach AWS or change the machine (`aws`, `curl`, `systemctl`, `useradd`,
//! `id`, `chown`, `dnf`, `amazon-cloudwatch-agent-ctl`): it installs a release that matches the
//! manifest the stack names, with a verified-TLS database URL, the operator token and the webhook
//! signing keys (the stack's generated word turned into a key), then ships
//! the file the unit writes to the service's log group; it refuses, installing nothing and
//! starting nothing, a release whose binary or manifest was changed in the bucket.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use infra::release::{self, Release};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TOKEN: &str = "OperatorToken0123456789abcdefghijklmnopqrstuvwxyz";

/// What CloudFormation generates for the webhook signing keys secret: 64 letters and digits.
const WEBHOOK_WORD: &str = "Webhook0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV";

/// The key a generated word stands for: `whsk_` + base64(SHA-256(word)).
fn derived_key(word: &str) -> String {
    format!("whsk_{}", STANDARD.encode(Sha256::digest(word.as_bytes())))
}

struct Machine {
    _dir: tempfile::TempDir,
    root: PathBuf,
    bucket: PathBuf,
    log: PathBuf,
    stubs: PathBuf,
    /// What the webhook signing keys secret holds (the stand-in `aws` reads it on every call).
    webhook_secret: PathBuf,
}

fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

fn script(path: &Path, body: &str) {
    write(path, format!("#!/usr/bin/env bash\nset -euo pipefail\n{body}\n"));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Machine {
    /// A bucket holding one release of stand-in binaries, and the gateway's bootstrap inputs
    /// naming it as the stack would.
    fn new() -> (Self, Release) {
        let dir = tempfile::tempdir().unwrap();
        let (root, bucket, log, stubs, webhook_secret) = (
            dir.path().join("root"),
            dir.path().join("bucket"),
            dir.path().join("calls.log"),
            dir.path().join("stubs"),
            dir.path().join("webhook-secret"),
        );
        write(&webhook_secret, WEBHOOK_WORD);
        let bins = dir.path().join("bins");
        std::fs::create_dir_all(&bins).unwrap();
        for service in release::SERVICES {
            write(&bins.join(service), format!("#!/bin/sh\necho {service}\n"));
        }
        let release = Release::collect(&bins).unwrap();
        let prefix = bucket.join(release.prefix());
        for service in release::SERVICES {
            std::fs::copy(bins.join(service), {
                let to = prefix.join("bin").join(service);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                to
            })
            .unwrap();
        }
        write(&prefix.join(release::BOOTSTRAP_KEY), release::BOOTSTRAP);
        write(&prefix.join(release::UNIT_KEY), release::UNIT);
        write(&prefix.join(release::MANIFEST_KEY), release.manifest());
        write(
            &root.join("etc/saga/gateway.bootstrap"),
            format!(
                "ARTIFACT_BUCKET=bucket\nRELEASE_PREFIX={}\nRELEASE_MANIFEST_SHA256={}\n\
                 DATABASE_SECRET_ARN=db-secret\nAPP_DATABASE_SECRET_ARN=app-secret\nOPERATOR_TOKEN_SECRET_ARN=token-secret\n\
                 WEBHOOK_SIGNING_KEYS_SECRET_ARN=webhook-secret\n\
                 DATABASE_HOST=gateway.db.example\nDATABASE_PORT=5432\nDATABASE_NAME=gateway\n\
                 DATABASE_CA_BUNDLE_URL=https://truststore.example/bundle.pem\n\
                 LOG_GROUP=/saga/gateway\n",
                release.prefix(),
                release.uploaded().manifest_sha256
            ),
        );
        let log_path = log.display();
        script(
            &stubs.join("aws"),
            &format!(
                r#"echo "aws $*" >>{log_path}
case "$1 $2" in
  "s3 cp") src="${{@: -2:1}}"; cp "{bucket}/${{src#s3://bucket/}}" "${{@: -1}}" ;;
  "secretsmanager get-secret-value")
    case "$4" in
      db-secret) echo '{{"username": "gateway", "password": "p@ss w/rd"}}' ;;
      app-secret) echo '{{"username": "gateway_app", "password": "app p@ss"}}' ;;
      token-secret) echo '{TOKEN}' ;;
      webhook-secret) cat '{webhook}'; echo ;;
    esac ;;
  *) exit 1 ;;
esac"#,
                bucket = bucket.display(),
                webhook = webhook_secret.display()
            ),
        );
        script(
            &stubs.join("curl"),
            &format!(
                "echo \"curl $*\" >>{log_path}\nprintf -- '-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n' >\"${{@: -1}}\""
            ),
        );
        let stubbed = [
            "systemctl",
            "useradd",
            "id",
            "chown",
            "dnf",
            "amazon-cloudwatch-agent-ctl",
        ];
        for name in stubbed {
            script(&stubs.join(name), &format!("echo \"{name} $*\" >>{log_path}"));
        }
        // The migration step: which users its two URLs name.
        script(
            &stubs.join("runuser"),
            &format!(
                "user() {{ printf '%s' \"$1\" | sed 's#^postgres://\\([^:]*\\):.*#\\1#'; }}\n\
                 echo \"runuser $* owner=$(user \"$MIGRATE_DATABASE_URL\") app=$(user \"$DATABASE_URL\")\" >>{log_path}"
            ),
        );
        (
            Self {
                _dir: dir,
                root,
                bucket,
                log,
                stubs,
                webhook_secret,
            },
            release,
        )
    }

    fn bootstrap(&self) -> Output {
        let path = format!("{}:{}", self.stubs.display(), std::env::var("PATH").unwrap());
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("ec2/bootstrap.sh"))
            .arg("gateway")
            .env("SAGA_ROOT", &self.root)
            .env("PATH", path)
            .output()
            .expect("run bash")
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn installed(&self) -> bool {
        self.root.join("usr/local/bin/gateway").exists()
            || self.root.join("etc/saga/gateway.secret.env").exists()
            || self.root.join("etc/systemd/system/saga-service@.service").exists()
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_release_that_matches_its_manifest_is_installed_with_verified_tls_the_token_and_the_keys() {
    let (machine, _) = Machine::new();
    let out = machine.bootstrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let binary = std::fs::read_to_string(machine.root.join("usr/local/bin/gateway")).unwrap();
    assert_eq!(binary, "#!/bin/sh\necho gateway\n");
    let env = std::fs::read_to_string(machine.root.join("etc/saga/gateway.secret.env")).unwrap();
    assert_eq!(
        env,
        format!(
            "DATABASE_URL=postgres://gateway_app:app%20p%40ss@gateway.db.example:5432/gateway\
             ?sslmode=verify-full&sslrootcert=/etc/saga/rds-ca-bundle.pem\nOPERATOR_TOKEN={TOKEN}\n\
             WEBHOOK_SIGNING_KEYS={}\n",
            derived_key(WEBHOOK_WORD)
        )
    );
    let mode = std::fs::metadata(machine.root.join("etc/saga/gateway.secret.env"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the secrets file is root's alone");
    let ca = std::fs::read_to_string(machine.root.join("etc/saga/rds-ca-bundle.pem")).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let calls = machine.calls();
    assert!(calls.contains("curl ") && calls.contains("--proto =https"), "{calls}");
    assert!(
        calls.contains("systemctl restart saga-service@gateway.service"),
        "{calls}"
    );
    // Migrated as the owner, as the saga user, before the service (the app role) starts; the
    // owner's password is on no disk.
    let migrate = calls.find("runuser -u saga -- ").expect("the migration step ran");
    assert!(calls[migrate..].contains("/usr/local/bin/gateway migrate"), "{calls}");
    assert!(calls.contains("migrate owner=gateway app=gateway_app"), "{calls}");
    assert!(migrate < calls.find("systemctl restart").unwrap(), "{calls}");
    for file in walk(&machine.root) {
        let text = std::fs::read(&file).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&text).contains("p%40ss%20w%2Frd"),
            "{} holds the owner's password",
            file.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The file the unit appends the service's output to, for one service (`%i` expanded).
fn unit_log_file(service: &str) -> String {
    let line = release::UNIT
        .lines()
        .find_map(|l| l.strip_prefix("StandardOutput=append:"))
        .expect("the unit appends its output to a file");
    let stderr = release::UNIT.lines().find_map(|l| l.strip_prefix("StandardError="));
    assert_eq!(stderr, Some("inherit"), "error output goes to the same file");
    line.replace("%i", service)
}

#[test]
fn the_file_the_unit_writes_is_shipped_to_the_log_group_once_the_service_runs() {
    let (machine, _) = Machine::new();
    let out = machine.bootstrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log_file = unit_log_file("gateway");
    assert_eq!(log_file, "/var/log/saga/gateway.log");

    // The agent tails exactly that file into the group the stack named, one stream per
    // instance, and is told nothing else to do (no metrics, no retention: the stack sets it).
    let config = std::fs::read_to_string(machine.root.join("etc/saga/cloudwatch-agent.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).expect("agent configuration is JSON");
    let files = &config["logs"]["logs_collected"]["files"]["collect_list"];
    assert_eq!(
        files,
        &serde_json::json!([{
            "file_path": log_file,
            "log_group_name": "/saga/gateway",
            "log_stream_name": "{instance_id}",
        }]),
        "{config}"
    );
    let sections: Vec<&String> = config.as_object().unwrap().keys().collect();
    assert_eq!(sections, ["agent", "logs"], "{config}");

    // The directory is root's (systemd opens the file; the service never writes there itself),
    // and logrotate truncates the file in place, since systemd holds it open.
    let dir = std::fs::metadata(machine.root.join("var/log/saga")).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o750);
    let rotate = std::fs::read_to_string(machine.root.join("etc/logrotate.d/saga")).unwrap();
    assert!(rotate.starts_with("/var/log/saga/*.log {"), "{rotate}");
    for directive in ["copytruncate", "size 100M", "rotate 5"] {
        assert!(rotate.lines().any(|l| l.trim() == directive), "{directive}: {rotate}");
    }
    let hourly = machine
        .root
        .join("etc/systemd/system/logrotate.timer.d/saga-hourly.conf");
    assert!(std::fs::read_to_string(hourly).unwrap().contains("OnCalendar=hourly"));

    // Shipping starts after the service: a slow package download never delays its health.
    let calls = machine.calls();
    let position = |needle: &str| calls.find(needle).unwrap_or_else(|| panic!("no `{needle}` in {calls}"));
    let started = position("systemctl restart saga-service@gateway.service");
    let installed = position("dnf install --assumeyes --quiet amazon-cloudwatch-agent logrotate");
    let agent = format!(
        "amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -c file:{}/etc/saga/cloudwatch-agent.json -s",
        machine.root.display()
    );
    let shipping = position(&agent);
    assert!(started < installed && installed < shipping, "{calls}");
    assert!(calls.contains("systemctl restart logrotate.timer"), "{calls}");
}

#[test]
fn an_agent_that_cannot_be_installed_fails_the_bootstrap_but_leaves_the_service_running() {
    let (machine, _) = Machine::new();
    script(
        &machine.stubs.join("dnf"),
        &format!("echo \"dnf $*\" >>{}\nexit 1", machine.log.display()),
    );
    let out = machine.bootstrap();
    let text = stderr(&out);
    assert!(!out.status.success(), "a missing agent went unreported");
    assert!(
        text.contains("cannot install amazon-cloudwatch-agent") && text.contains("its log stays on the instance"),
        "{text}"
    );
    let calls = machine.calls();
    assert!(
        calls.contains("systemctl restart saga-service@gateway.service"),
        "{calls}"
    );
    assert!(!calls.contains("amazon-cloudwatch-agent-ctl"), "{calls}");
}

#[test]
fn a_binary_changed_in_the_bucket_is_refused_and_nothing_starts() {
    let (machine, release) = Machine::new();
    write(
        &machine.bucket.join(release.prefix()).join("bin/gateway"),
        "#!/bin/sh\necho evil\n",
    );
    let out = machine.bootstrap();
    let text = stderr(&out);
    assert!(!out.status.success(), "a tampered binary was accepted");
    assert!(
        text.contains("bin/gateway") && text.contains("refusing to start"),
        "{text}"
    );
    assert!(!machine.installed(), "something was installed");
    assert!(!machine.calls().contains("systemctl"), "{}", machine.calls());
    assert!(!machine.calls().contains("dnf"), "{}", machine.calls());
    assert!(
        !machine.calls().contains("secretsmanager"),
        "secrets read for a refused release"
    );
}

#[test]
fn a_manifest_changed_to_match_a_changed_binary_is_refused_too() {
    let (machine, release) = Machine::new();
    let evil = "#!/bin/sh\necho evil\n";
    let prefix = machine.bucket.join(release.prefix());
    write(&prefix.join("bin/gateway"), evil);
    let manifest = release
        .manifest()
        .lines()
        .map(|line| match line.split_once("  ") {
            Some((_, "bin/gateway")) => format!("{}  bin/gateway\n", hex(evil.as_bytes())),
            _ => format!("{line}\n"),
        })
        .collect::<String>();
    write(&prefix.join(release::MANIFEST_KEY), manifest);
    let out = machine.bootstrap();
    let text = stderr(&out);
    assert!(!out.status.success(), "a rewritten manifest was accepted");
    assert!(
        text.contains("manifest.sha256") && text.contains("refusing to start"),
        "{text}"
    );
    assert!(!machine.installed(), "something was installed");
}

fn secret_env(machine: &Machine) -> String {
    std::fs::read_to_string(machine.root.join("etc/saga/gateway.secret.env")).unwrap()
}

/// A rotation lists several keys, the signing one first: `whsk_` keys are kept as they are,
/// generated words become their keys, in the order given.
#[test]
fn the_webhook_keys_keep_their_order_and_whsk_keys_pass_as_they_are() {
    let (machine, _) = Machine::new();
    let new = format!("whsk_{}", STANDARD.encode([7u8; 32]));
    write(&machine.webhook_secret, format!(" {new} ,{WEBHOOK_WORD},"));
    let out = machine.bootstrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let line = format!("WEBHOOK_SIGNING_KEYS={new},{}\n", derived_key(WEBHOOK_WORD));
    let env = secret_env(&machine);
    assert!(env.ends_with(&line), "{env}");
}

/// A secret the gateway could not read stops the bootstrap before anything is installed, and
/// the message names the entry by its position, never by its text.
#[test]
fn a_webhook_keys_secret_that_is_not_keys_is_refused_without_printing_it() {
    let not_base64 = "whsk_not+base64+at+all!";
    let short = format!("whsk_{}", STANDARD.encode([1u8; 16]));
    // The last character carries bits a strict decoder (the gateway's) refuses.
    let loose = format!("whsk_{}", STANDARD.encode([2u8; 32]).replace("I=", "J="));
    let cases = [
        (format!("{WEBHOOK_WORD},{not_base64}"), "entry 2", not_base64.to_owned()),
        (short.clone(), "entry 1", short),
        (loose.clone(), "entry 1", loose),
        (
            "Tooshort0123456789".to_owned(),
            "entry 1",
            "Tooshort0123456789".to_owned(),
        ),
        (format!("{WEBHOOK_WORD}-"), "entry 1", WEBHOOK_WORD.to_owned()),
        (" , ".to_owned(), "names no key", String::new()),
    ];
    for (secret, says, hidden) in cases {
        let (machine, _) = Machine::new();
        write(&machine.webhook_secret, &secret);
        let out = machine.bootstrap();
        let text = stderr(&out);
        assert!(!out.status.success(), "{secret:?} was accepted");
        assert!(
            text.contains(says) && text.contains("webhook signing keys") && text.contains("refusing to start"),
            "{secret:?}: {text}"
        );
        if !hidden.is_empty() {
            assert!(!text.contains(&hidden), "{secret:?} printed: {text}");
        }
        assert!(!machine.installed(), "{secret:?}: something was installed");
        assert!(
            !machine.calls().contains("systemctl"),
            "{secret:?}: {}",
            machine.calls()
        );
    }
}
