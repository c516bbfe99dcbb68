//! Where a checkpoint's files go: runc's defaults (`--image-path` is `./checkpoint`,
//! `--work-path` is the image directory), made absolute against the caller's directory.

use std::path::{Path, PathBuf};

use super::cr_error::CrError;
use super::cr_opts::CommonOpts;

/// The image and work directories of one checkpoint or restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrPaths {
    /// Images.
    pub images: PathBuf,
    /// dump.log / restore.log, stats-dump / stats-restore.
    pub work: PathBuf,
}

impl CrPaths {
    /// Resolves the paths of `common` against `cwd`.
    pub fn resolve_in(common: &CommonOpts, cwd: &Path) -> CrPaths {
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                cwd.join(p)
            }
        };
        let images = match &common.image_path {
            Some(p) if !p.as_os_str().is_empty() => abs(p),
            _ => cwd.join("checkpoint"),
        };
        let work = match &common.work_path {
            Some(p) if !p.as_os_str().is_empty() => abs(p),
            _ => images.clone(),
        };
        CrPaths { images, work }
    }

    /// Resolves the paths of `common` against the current directory.
    pub fn resolve(common: &CommonOpts) -> Result<CrPaths, CrError> {
        let cwd = std::env::current_dir().map_err(CrError::io("read current directory", "."))?;
        Ok(Self::resolve_in(common, &cwd))
    }

    /// Creates the image and work directories (mode 0700: images hold the container's memory).
    pub fn create(&self) -> Result<(), CrError> {
        use std::os::unix::fs::DirBuilderExt;
        for d in [&self.images, &self.work] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(CrError::io("create checkpoint directory", d))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_defaults() {
        let p = CrPaths::resolve_in(&CommonOpts::default(), Path::new("/w"));
        assert_eq!(p.images, PathBuf::from("/w/checkpoint"));
        assert_eq!(p.work, PathBuf::from("/w/checkpoint"));
    }

    #[test]
    fn relative_paths_are_made_absolute() {
        let c = CommonOpts {
            image_path: Some("img".into()),
            work_path: Some("/abs/work".into()),
            ..Default::default()
        };
        let p = CrPaths::resolve_in(&c, Path::new("/w"));
        assert_eq!(p.images, PathBuf::from("/w/img"));
        assert_eq!(p.work, PathBuf::from("/abs/work"));
    }
}
