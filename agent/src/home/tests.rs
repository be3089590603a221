//! The home's permissions and its temporary files.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn config() -> AgentConfig {
    AgentConfig {
        server_urls: vec!["http://127.0.0.1:1".into()],
        organization_id: Uuid::from_u128(1),
        organization_name: "Studio".into(),
        agent_id: Uuid::from_u128(2),
        agent_name: "laptop".into(),
        token: "secret-token".into(),
        allow_unsealed_key_on_disk: false,
        insecure_http: false,
        ca_cert: None,
    }
}

#[test]
fn a_new_home_is_private() {
    let root = tempfile::tempdir().unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = Home::new(root.path().join("a/b/home"));
    home.save_config(&config()).unwrap();
    assert_eq!(mode(home.dir()), 0o700);
    assert_eq!(mode(&root.path().join("a")), 0o700, "missing parents too");
    assert_eq!(mode(&home.path(CONFIG_FILE)), 0o600);
    assert_eq!(home.config().unwrap(), config());
    // The catalog and the daemon's files create the home the same way.
    let other = Home::new(root.path().join("catalog-first"));
    other.catalog().unwrap();
    assert_eq!(mode(other.dir()), 0o700);
}

#[test]
fn an_existing_home_open_to_others_is_tightened() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("home");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let home = Home::new(&dir);
    home.save_config(&config()).unwrap();
    assert_eq!(mode(&dir), 0o700);

    fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
    home.catalog_writer().unwrap();
    assert_eq!(mode(&dir), 0o700);
    // An owner-only home is left alone.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
    home.ensure_dir().unwrap();
    assert_eq!(mode(&dir), 0o500);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn files_are_written_through_fresh_exclusive_temporary_names() {
    let root = tempfile::tempdir().unwrap();
    let home = Home::new(root.path().join("home"));
    home.ensure_dir().unwrap();
    // A planted link where a predictable temporary name would be must not be followed.
    let victim = root.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    for planted in ["agent.tmp", ".agent.toml.tmp", "agent.toml.tmp"] {
        std::os::unix::fs::symlink(&victim, home.path(planted)).unwrap();
    }
    home.save_config(&config()).unwrap();
    home.save_config(&config()).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(home.config().unwrap(), config());
    assert!(fs::symlink_metadata(home.path(CONFIG_FILE))
        .unwrap()
        .file_type()
        .is_file());
    // Nothing left behind but the planted links and the file itself.
    let mut names: Vec<String> = fs::read_dir(home.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".agent.toml.tmp",
            "agent.tmp",
            "agent.toml",
            "agent.toml.tmp"
        ]
    );
}

#[test]
fn scratch_folders_are_fresh_private_and_removed() {
    let root = tempfile::tempdir().unwrap();
    let home = Home::new(root.path().join("home"));
    let a = home.scratch_dir("backup-").unwrap();
    let b = home.scratch_dir("backup-").unwrap();
    assert_ne!(a.path(), b.path());
    for d in [a.path(), b.path()] {
        assert_eq!(d.parent().unwrap(), home.path(TMP_DIR));
        assert!(d
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("backup-"));
        assert_eq!(mode(d), 0o700);
    }
    assert_eq!(mode(&home.path(TMP_DIR)), 0o700);
    assert_eq!(mode(home.dir()), 0o700);
    let gone = a.path().to_path_buf();
    fs::write(gone.join("part-000000.ndjson"), b"x").unwrap();
    drop(a);
    assert!(!gone.exists());
    assert!(b.path().exists());
}
