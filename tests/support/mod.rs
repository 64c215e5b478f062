//! Shared by the binary's integration tests: a small workspace written to a folder.

use std::path::{Path, PathBuf};

/// Writes `text` to `root/path`, creating folders.
pub fn write_file(root: &Path, path: &str, text: &str) {
    let full = root.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, text).unwrap();
}

/// A small Python workspace: `shop/pricing.py`, `shop/app.py` importing it (its cursor line,
/// 5:4, is blank), and an ignored copy `build/pricing.py` defining `stale_net_price`. Returns
/// the path of `shop/app.py`.
pub fn shop_workspace(root: &Path) -> PathBuf {
    write_file(
        root,
        "shop/pricing.py",
        "def net_price(gross: float, vat_rate: float) -> float:\n    return gross / (1 + vat_rate)\n",
    );
    write_file(root, ".gitignore", "build/\n");
    write_file(
        root,
        "build/pricing.py",
        "def stale_net_price(gross: float) -> float:\n    return gross\n",
    );
    write_file(root, "shop/app.py", SHOP_APP);
    root.join("shop/app.py")
}

/// The text of `shop/app.py`.
pub const SHOP_APP: &str =
    "from .pricing import net_price\n\n\ndef checkout(cart):\n    total = sum(cart)\n    \n";
