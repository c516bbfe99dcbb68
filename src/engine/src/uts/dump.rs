//! Dump half of the UTS namespace.

use std::ffi::CStr;

use ferry_images::{pb, ImageDir};

use super::enter::{in_namespaces, Ns};
use super::{image_name, UtsError, UtsState};

fn field(raw: &[libc::c_char]) -> String {
    // SAFETY: uname(2) NUL-terminates every field within its fixed-size array.
    unsafe { CStr::from_ptr(raw.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Reads the UTS namespace of task `pid`.
pub fn read_uts(pid: i32) -> Result<UtsState, UtsError> {
    let r = in_namespaces(pid, &[Ns::Uts], || {
        // SAFETY: utsname is plain old data; all-zero is a valid value.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid, writable utsname.
        if unsafe { libc::uname(&mut u) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(UtsState {
            nodename: field(&u.nodename),
            domainname: field(&u.domainname),
        })
    })
    .map_err(|source| UtsError::Enter {
        stage: "dump",
        source,
    })?;
    r.map_err(|source| UtsError::Sys {
        stage: "dump",
        pid,
        call: "uname",
        source,
    })
}

/// Dumps the UTS namespace of task `pid` into `utsns-NS_ID.img`.
pub fn dump_uts(pid: i32, dir: &ImageDir, ns_id: u32) -> Result<UtsState, UtsError> {
    let st = read_uts(pid)?;
    let file = image_name(ns_id);
    let e = pb::UtsnsEntry {
        nodename: st.nodename.clone(),
        domainname: st.domainname.clone(),
    };
    dir.write_entries(&file, std::slice::from_ref(&e))
        .map_err(|source| UtsError::Image {
            stage: "dump",
            file,
            source,
        })?;
    Ok(st)
}
