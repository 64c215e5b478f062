import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, test } from 'node:test';
import { binaryName, findServer } from '../src/serverPath';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'deepseek-server-path-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));

/** A folder holding an executable named like the server (or `name`), and its path. */
function folderWithServer(folder: string, name = binaryName()): string {
  const dir = path.join(root, folder);
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, name);
  fs.writeFileSync(file, '#!/bin/sh\n', { mode: 0o755 });
  return file;
}

const extensionDir = path.join(root, 'extension');
const bundled = folderWithServer(path.join('extension', 'bin'));
const onPath = folderWithServer('path-b');
fs.mkdirSync(path.join(root, 'path-a'));
const pathEnv = [path.join(root, 'path-a'), path.dirname(onPath)].join(path.delimiter);

test('the setting comes first', () => {
  const configured = folderWithServer('custom');
  assert.deepEqual(findServer({ configured, extensionDir, pathEnv }), { found: true, path: configured, source: 'setting' });
});

test('a setting that is not an executable file is an error naming it, not a fallback', () => {
  const configured = path.join(root, 'missing', 'deepseek-lsp');
  const location = findServer({ configured, extensionDir, pathEnv });
  assert.equal(location.found, false);
  assert.match(!location.found ? location.message : '', /deepseek\.serverPath is ".*missing.*", which is not an executable file/);
});

test('then the binary bundled in the extension', () => {
  assert.deepEqual(findServer({ configured: '', extensionDir, pathEnv }), { found: true, path: bundled, source: 'bundled' });
});

test('then the first PATH folder that has it', () => {
  const location = findServer({ extensionDir: path.join(root, 'bare-extension'), pathEnv });
  assert.deepEqual(location, { found: true, path: onPath, source: 'PATH' });
});

test('a file without the execute bit does not count', { skip: process.platform === 'win32' }, () => {
  const plain = folderWithServer('not-executable');
  fs.chmodSync(plain, 0o644);
  const location = findServer({ extensionDir: path.join(root, 'bare-extension'), pathEnv: path.dirname(plain) });
  assert.equal(location.found, false);
});

test('Windows looks for deepseek-lsp.exe and splits PATH at semicolons', () => {
  const exe = folderWithServer('windows', 'deepseek-lsp.exe');
  const location = findServer({ extensionDir: path.join(root, 'bare-extension'), pathEnv: `C:\\nowhere;${path.dirname(exe)}`, platform: 'win32' });
  assert.deepEqual(location, { found: true, path: exe, source: 'PATH' });
});

test('nothing found: the error says where it looked and how to fix it', () => {
  const bare = path.join(root, 'bare-extension');
  const emptyFolder = path.join(root, 'path-a');
  const location = findServer({ extensionDir: bare, pathEnv: emptyFolder });
  assert.equal(location.found, false);
  const message = !location.found ? location.message : '';
  assert.ok(message.includes('deepseek.serverPath (not set)'), message);
  assert.ok(message.includes(path.join(bare, 'bin', binaryName())), message);
  assert.ok(message.includes(emptyFolder), message);
  assert.ok(message.includes('set deepseek.serverPath'), message);
  assert.ok(message.includes('put deepseek-lsp on PATH'), message);
});
