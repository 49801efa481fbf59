use super::*;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    v.sort();
    v
}

#[test]
fn a_file_is_replaced_whole_and_no_temporary_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.json");
    write_file(&path, b"first").unwrap();
    write_file(&path, b"second").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"second");
    assert_eq!(names(dir.path()), ["a.json"]);
}

#[test]
fn a_failing_fill_keeps_the_old_file_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.bin");
    write_file(&path, b"old").unwrap();
    let r: std::result::Result<(), Error> = write_file_with(&path, |w| {
        w.write_all(b"partial").unwrap();
        Err(Error::new(&path, io::Error::from_raw_os_error(28)))
    });
    assert_eq!(r.unwrap_err().cause.raw_os_error(), Some(28));
    assert_eq!(fs::read(&path).unwrap(), b"old");
    assert_eq!(names(dir.path()), ["a.bin"]);
}

#[test]
fn a_target_that_cannot_be_replaced_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("sub");
    fs::create_dir(&blocked).unwrap();
    fs::write(blocked.join("x"), b"x").unwrap();
    let e = write_file(&blocked, b"bytes").unwrap_err();
    assert_eq!(e.path, blocked);
    assert_eq!(names(dir.path()), ["sub"]);
    let e = write_file(Path::new("/"), b"x").unwrap_err();
    assert_eq!(e.cause.kind(), ErrorKind::InvalidInput, "{e}");
}

#[test]
fn write_dir_appears_whole_refuses_to_overwrite_and_cleans_up_on_error() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("nested").join("out");
    let n: usize = write_dir(&out, |tmp| -> Result<usize> {
        write_file(&tmp.join("a"), b"1")?;
        fs::create_dir(tmp.join("sub")).map_err(Error::at(tmp))?;
        write_file(&tmp.join("sub").join("b"), b"2")?;
        Ok(2)
    })
    .unwrap();
    assert_eq!(n, 2);
    assert_eq!(names(&out), ["a", "sub"]);
    assert_eq!(names(out.parent().unwrap()), ["out"]);

    let e = write_dir(&out, |_| -> Result<()> { unreachable!("refused before any work") }).unwrap_err();
    assert_eq!(e.cause.kind(), ErrorKind::AlreadyExists);
    assert!(e.to_string().contains("already exists"), "{e}");

    let failed = root.path().join("failed");
    let r = write_dir(&failed, |tmp| -> Result<()> {
        write_file(&tmp.join("a"), b"1")?;
        Err(Error::new(tmp, io::Error::other("boom")))
    });
    assert!(r.is_err());
    assert_eq!(names(root.path()), ["nested"], "nothing of the failed directory is left");
}

#[test]
fn staging_accepts_an_empty_target_and_refuses_a_full_one_before_any_work() {
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("t");
    fs::create_dir(&target).unwrap();
    let s = StagingDir::new(&target).unwrap();
    write_file(&s.path().join("f"), b"x").unwrap();
    s.commit().unwrap();
    assert_eq!(names(&target), ["f"]);
    let e = StagingDir::new(&target).unwrap_err();
    assert_eq!(e.cause.kind(), ErrorKind::DirectoryNotEmpty);
    assert!(e.to_string().contains("not empty"), "{e}");
    let dropped = StagingDir::new(&root.path().join("u")).unwrap();
    let tmp = dropped.path().to_path_buf();
    assert!(tmp.is_dir());
    drop(dropped);
    assert!(!tmp.exists());
    assert_eq!(names(root.path()), ["t"]);
}

#[test]
fn replacing_swaps_a_full_directory_and_leaves_nothing_aside() {
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("step-1");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("old"), b"old").unwrap();
    let s = StagingDir::replacing(&target).unwrap();
    write_file(&s.path().join("new"), b"new").unwrap();
    assert_eq!(names(&target), ["old"], "the old directory is whole until the commit");
    s.commit().unwrap();
    assert_eq!(names(&target), ["new"]);
    assert_eq!(names(root.path()), ["step-1"]);
    let aside = StagingDir::aside_name(&target).unwrap();
    assert!(aside.file_name().unwrap().to_string_lossy().starts_with(".step-1.old-"));
}
