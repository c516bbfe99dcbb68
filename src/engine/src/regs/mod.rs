//! CPU state in core-TID.img: GP registers, XSAVE/FPU, FS/GS base and TLS; read with ptrace at dump, set by the restorer's sigreturn frame at restore.

pub mod dump;
pub mod restore;
