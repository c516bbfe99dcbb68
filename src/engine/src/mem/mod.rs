//! Address space: VMAs (mm-PID.img), present pages (pagemap-PID.img + pages-N.img); dump drains through the parasite, restore refills in the restorer.

pub mod dump;
pub mod dump_pages;
pub mod reserve;
pub mod restore;
pub mod shared;
