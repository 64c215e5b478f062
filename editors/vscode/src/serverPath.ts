// Where the deepseek-lsp binary is: the `deepseek.serverPath` setting, then a binary bundled in
// the extension's `bin/`, then PATH. No `vscode` import, so the tests can drive it with temp dirs.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface ServerSearch {
  /** `deepseek.serverPath`; empty or undefined when unset. */
  configured?: string;
  /** The extension's install folder, which may hold `bin/deepseek-lsp`. */
  extensionDir: string;
  /** `$PATH` as the editor sees it. */
  pathEnv?: string;
  platform?: NodeJS.Platform;
}

export type ServerLocation =
  | { found: true; path: string; source: 'setting' | 'bundled' | 'PATH' }
  | { found: false; message: string };

export function binaryName(platform: NodeJS.Platform = process.platform): string {
  return platform === 'win32' ? 'deepseek-lsp.exe' : 'deepseek-lsp';
}

export function findServer(search: ServerSearch): ServerLocation {
  const platform = search.platform ?? process.platform;
  const name = binaryName(platform);
  const configured = search.configured?.trim();
  if (configured) {
    const candidate = expandHome(configured);
    if (isExecutable(candidate, platform)) {
      return { found: true, path: candidate, source: 'setting' };
    }
    // A path the user chose that does not work is an error, not a reason to run another binary.
    return {
      found: false,
      message:
        `deepseek-lsp: the setting deepseek.serverPath is "${configured}", which is not an executable file. ` +
        `Point it at the deepseek-lsp binary (cargo build --release writes target/release/${name}), or clear it to use ` +
        `the bundled binary or PATH.`,
    };
  }
  const bundled = path.join(search.extensionDir, 'bin', name);
  if (isExecutable(bundled, platform)) {
    return { found: true, path: bundled, source: 'bundled' };
  }
  const folders = (search.pathEnv ?? '').split(platform === 'win32' ? ';' : ':').filter((folder) => folder !== '');
  for (const folder of folders) {
    const candidate = path.join(folder, name);
    if (isExecutable(candidate, platform)) {
      return { found: true, path: candidate, source: 'PATH' };
    }
  }
  const searched = folders.length > 0 ? folders.join(', ') : '(PATH is empty)';
  return {
    found: false,
    message:
      `deepseek-lsp: the server binary was not found. Looked at: the setting deepseek.serverPath (not set); ` +
      `the bundled ${bundled} (absent); ${name} in each PATH folder: ${searched}. ` +
      `To fix it, build it (cargo build --release in the deepseek-lsp repository) and set deepseek.serverPath ` +
      `to target/release/${name}, or put ${name} on PATH, then run "DeepSeek: Restart Server".`,
  };
}

function expandHome(file: string): string {
  return file === '~' || file.startsWith('~/') ? path.join(os.homedir(), file.slice(1)) : file;
}

function isExecutable(file: string, platform: NodeJS.Platform): boolean {
  try {
    if (!fs.statSync(file).isFile()) {
      return false;
    }
    // Windows has no execute bit; the .exe name is what makes it runnable.
    if (platform !== 'win32') {
      fs.accessSync(file, fs.constants.X_OK);
    }
    return true;
  } catch {
    return false;
  }
}
