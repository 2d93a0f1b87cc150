//! The deployed launch templates, read back from the emulator: encrypted root volumes, user data
//! that checks the release against the manifest the stack names before running anything, and
//! tells the service to log JSON and its bootstrap which log group to ship to.

use super::edge::Resources;
use infra::app::Deployment;

/// Standard base64 (user data comes back encoded).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .map(value)
        .collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let n = chunk.iter().fold(0u32, |n, d| (n << 6) | u32::from(*d)) << (6 * (4 - chunk.len()));
            let bytes = n.to_be_bytes();
            bytes[1..chunk.len()].to_vec()
        })
        .collect()
}

/// Each service's latest launch template: the root volume encrypted, and user data that names
/// the deployment's manifest and checks it, and bootstrap.sh against it, before running it.
pub async fn assert_launch_templates(ec2: &aws_sdk_ec2::Client, resources: &Resources, deployment: &Deployment) {
    let templates = &resources["AWS::EC2::LaunchTemplate"];
    assert_eq!(templates.len(), 3);
    for (logical, id) in templates {
        let out = ec2
            .describe_launch_template_versions()
            .launch_template_id(id)
            .versions("$Latest")
            .send()
            .await
            .unwrap();
        let data = out.launch_template_versions()[0]
            .launch_template_data()
            .unwrap_or_else(|| panic!("{logical}: no data"));
        let root: Vec<_> = data
            .block_device_mappings()
            .iter()
            .filter(|m| m.device_name() == Some("/dev/xvda"))
            .collect();
        assert_eq!(root.len(), 1, "{logical}: root volume mapping");
        let ebs = root[0].ebs().unwrap_or_else(|| panic!("{logical}: no EBS"));
        assert_eq!(ebs.encrypted(), Some(true), "{logical}: root volume not encrypted");
        let user_data = String::from_utf8(base64_decode(data.user_data().unwrap_or_default())).unwrap();
        let pinned = format!("RELEASE_MANIFEST_SHA256={}", deployment.release_manifest_sha256);
        assert!(user_data.contains(&pinned), "{logical}: {user_data}");
        let checks = format!(
            "echo \"{}  $scratch/manifest.sha256\" | sha256sum --check",
            deployment.release_manifest_sha256
        );
        let check = user_data
            .find(&checks)
            .unwrap_or_else(|| panic!("{logical}: no manifest check"));
        let bootstrap_check = user_data
            .find("$scratch/bootstrap.sh\" | sha256sum --check")
            .unwrap_or_else(|| panic!("{logical}: bootstrap.sh not checked"));
        let run = user_data
            .find("exec bash /usr/local/sbin/saga-bootstrap")
            .expect("runs bootstrap");
        assert!(check < run && bootstrap_check < run, "{logical}: runs before it checks");

        // The service logs JSON lines (what the metric filters read), and its bootstrap is told
        // its own log group, the one its role may write to.
        let service = user_data[run..]
            .trim_start_matches("exec bash /usr/local/sbin/saga-bootstrap")
            .trim();
        let env = format!("cat >/etc/saga/{service}.env <<'EOF'\n");
        let env = &user_data[user_data
            .find(&env)
            .unwrap_or_else(|| panic!("{logical}: no {service}.env"))..];
        let env = &env[..env.find("\nEOF\n").expect("the end of the env file")];
        assert!(env.lines().any(|l| l == "LOG_FORMAT=json"), "{logical}: {env}");
        let prefix = deployment.stacks.app.strip_suffix("-app").expect("<prefix>-app");
        let log_group = format!("\nLOG_GROUP=/{prefix}/{service}\n");
        assert_eq!(user_data.matches("\nLOG_GROUP=").count(), 1, "{logical}: {user_data}");
        assert!(user_data.contains(&log_group), "{logical}: {user_data}");
    }
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
    assert_eq!(base64_decode("aGk="), b"hi");
}
