//! Restore half of the UTS namespace.

use ferry_images::{pb, ImageDir};

use super::enter::{in_namespaces, Ns};
use super::{image_name, UtsError, UtsState};

/// The longest name the kernel takes (`__NEW_UTS_LEN`).
const UTS_LEN: usize = 64;

/// Reads `utsns-NS_ID.img`.
pub fn read_image(dir: &ImageDir, ns_id: u32) -> Result<UtsState, UtsError> {
    let file = image_name(ns_id);
    let e: pb::UtsnsEntry = dir.read_one(&file).map_err(|source| UtsError::Image {
        stage: "restore",
        file,
        source,
    })?;
    Ok(UtsState {
        nodename: e.nodename,
        domainname: e.domainname,
    })
}

/// Sets hostname and domainname in the UTS namespace of task `pid`.
pub fn apply_uts(pid: i32, st: &UtsState, file: &str) -> Result<(), UtsError> {
    for (what, v) in [("nodename", &st.nodename), ("domainname", &st.domainname)] {
        if v.len() > UTS_LEN || v.contains('\0') {
            return Err(UtsError::Invalid {
                pid,
                file: file.to_string(),
                what: format!("{what} {v:?} is longer than {UTS_LEN} bytes or holds a NUL"),
            });
        }
    }
    let r = in_namespaces(
        pid,
        &[Ns::Uts],
        || -> Result<(), (&'static str, std::io::Error)> {
            // SAFETY: pointer and length describe the nodename's bytes, alive for the call.
            let rc = unsafe { libc::sethostname(st.nodename.as_ptr().cast(), st.nodename.len()) };
            if rc != 0 {
                return Err(("sethostname", std::io::Error::last_os_error()));
            }
            // SAFETY: pointer and length describe the domainname's bytes, alive for the call.
            let rc =
                unsafe { libc::setdomainname(st.domainname.as_ptr().cast(), st.domainname.len()) };
            if rc != 0 {
                return Err(("setdomainname", std::io::Error::last_os_error()));
            }
            Ok(())
        },
    )
    .map_err(|source| UtsError::Enter {
        stage: "restore",
        source,
    })?;
    r.map_err(|(call, source)| UtsError::Sys {
        stage: "restore",
        pid,
        call,
        source,
    })
}

/// Restores `utsns-NS_ID.img` into the UTS namespace of task `pid` (prepared by the caller).
pub fn restore_uts(pid: i32, dir: &ImageDir, ns_id: u32) -> Result<UtsState, UtsError> {
    let st = read_image(dir, ns_id)?;
    apply_uts(pid, &st, &image_name(ns_id))?;
    Ok(st)
}
