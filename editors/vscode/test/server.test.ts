// Drives the real deepseek-lsp binary with the messages the extension sends, over the JSON-RPC
// library VSCode's language client uses. DEEPSEEK_LSP_BIN names the binary (default: the
// repository's debug build).

import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, test } from 'node:test';
import {
  CompletionRequest,
  ConfigurationRequest,
  DidChangeConfigurationNotification,
  DidOpenTextDocumentNotification,
  ExitNotification,
  InitializedNotification,
  InitializeRequest,
  InlineCompletionRequest,
  InlineCompletionTriggerKind,
  ProtocolConnection,
  RegistrationRequest,
  ShowMessageNotification,
  ShowMessageParams,
  ShutdownRequest,
  WorkDoneProgress,
  WorkDoneProgressBegin,
  WorkDoneProgressCreateRequest,
  WorkDoneProgressEnd,
  WorkDoneProgressReport,
} from 'vscode-languageserver-protocol';
import { createProtocolConnection, StreamMessageReader, StreamMessageWriter } from 'vscode-languageserver-protocol/node';
import { ExplainRequest, MODEL_LOAD_TOKEN, StatusRequest } from '../src/protocol';
import { serverSettings } from '../src/settings';

const SERVER_BIN = process.env.DEEPSEEK_LSP_BIN ?? path.resolve(__dirname, '../../../../target/debug/deepseek-lsp');
const TIMEOUT_MS = 120_000;
// The cursor is on the blank line 3, where the built-in model suggests something (at many
// places it writes only what the editor's cleanup removes: no item, which is valid too).
const SOURCE = 'class Point:\n    def __init__(self, x, y):\n        self.x = x\n        \n';
const CURSOR = { line: 3, character: 8 };

type Progress = WorkDoneProgressBegin | WorkDoneProgressReport | WorkDoneProgressEnd;

/** What the extension builds from these user settings (the extension-only keys stay out). */
const SETTINGS = serverSettings({ maxTokens: 16, chatMaxTokens: 12, debounceMs: 0, serverPath: SERVER_BIN, enable: true, logFile: null });

/** The server, connected like the extension: its requests answered, its messages recorded. */
class Server {
  readonly messages: ShowMessageParams[] = [];
  /** What `workspace/configuration` answers for section "deepseek". */
  configuration: unknown;
  private readonly process: ChildProcess;
  readonly connection: ProtocolConnection;

  constructor(configuration: unknown) {
    this.configuration = configuration;
    // Without $DEEPSEEK_LSP_MODEL the server runs its built-in model.
    const { DEEPSEEK_LSP_MODEL: _model, ...env } = process.env;
    this.process = spawn(SERVER_BIN, ['serve'], {
      env: { ...env, DEEPSEEK_LSP_LOG: 'error' },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.connection = createProtocolConnection(
      new StreamMessageReader(this.process.stdout!),
      new StreamMessageWriter(this.process.stdin!),
    );
    this.connection.onRequest(ConfigurationRequest.type, (params) => params.items.map(() => this.configuration));
    this.connection.onRequest(WorkDoneProgressCreateRequest.type, () => {});
    this.connection.onRequest(RegistrationRequest.type, () => {});
    this.connection.onNotification(ShowMessageNotification.type, (message) => {
      this.messages.push(message);
    });
    this.connection.listen();
  }

  /** Records `$/progress` for `token`; call before the request that reports on it. */
  watchProgress(token: string): Progress[] {
    const values: Progress[] = [];
    this.connection.onProgress(WorkDoneProgress.type, token, (value) => {
      values.push(value);
    });
    return values;
  }

  async initialize(initializationOptions: unknown, workspace: string): Promise<void> {
    const folder = pathToFileURL(workspace).href;
    await this.connection.sendRequest(InitializeRequest.type, {
      processId: process.pid,
      rootUri: folder,
      workspaceFolders: [{ uri: folder, name: path.basename(workspace) }],
      initializationOptions,
      // The capabilities the server looks at, as vscode-languageclient declares them.
      capabilities: {
        general: { positionEncodings: ['utf-16'] },
        window: { workDoneProgress: true },
        workspace: { configuration: true, didChangeWatchedFiles: { dynamicRegistration: true } },
        textDocument: {
          inlineCompletion: { dynamicRegistration: true },
          codeAction: { resolveSupport: { properties: ['edit'] } },
        },
      },
    });
    await this.connection.sendNotification(InitializedNotification.type, {});
  }

  /** The model's state once a load has ended; "unconfigured" only lasts until `initialized`
   * is handled, as the built-in model is always there. */
  async waitForModel(): Promise<string> {
    return waitFor('the model to load', async () => {
      const { model } = await this.connection.sendRequest(StatusRequest);
      return model === 'ready' || model === 'failed' ? model : undefined;
    });
  }

  async waitForMessage(needle: string): Promise<ShowMessageParams> {
    return waitFor(`a message containing ${needle}`, async () => this.messages.find((m) => m.message.includes(needle)));
  }

  async shutdown(): Promise<number | null> {
    const exited = new Promise<number | null>((resolve) => this.process.once('exit', resolve));
    await this.connection.sendRequest(ShutdownRequest.type);
    await this.connection.sendNotification(ExitNotification.type);
    const code = await exited;
    this.connection.dispose();
    return code;
  }

  kill(): void {
    this.connection.dispose();
    this.process.kill();
  }
}

/** Polls `probe` until it returns something, or fails after TIMEOUT_MS. */
async function waitFor<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    const found = await probe();
    if (found !== undefined) {
      return found;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const workspace = fs.mkdtempSync(path.join(os.tmpdir(), 'deepseek-vscode-'));
const file = path.join(workspace, 'example.py');
fs.writeFileSync(file, SOURCE);
const uri = pathToFileURL(file).href;
after(() => fs.rmSync(workspace, { recursive: true, force: true }));

describe('deepseek-lsp serve, as the extension drives it', { timeout: 5 * TIMEOUT_MS }, () => {
  let server: Server;
  let loadProgress: Progress[];

  before(async () => {
    assert.ok(fs.existsSync(SERVER_BIN), `no server binary at ${SERVER_BIN} (set DEEPSEEK_LSP_BIN)`);
    server = new Server(SETTINGS);
    loadProgress = server.watchProgress(MODEL_LOAD_TOKEN);
    await server.initialize(SETTINGS, workspace);
    await server.connection.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri, languageId: 'python', version: 1, text: SOURCE },
    });
  });
  after(() => server.kill());

  test('the built-in model loads, reported by $/progress and deepseek/status', async () => {
    assert.equal(await server.waitForModel(), 'ready');
    await waitFor('the load progress end', async () => loadProgress.find((p) => p.kind === 'end'));
    assert.deepEqual(
      loadProgress.map((p) => p.kind),
      ['begin', 'end'],
    );
    // The end and the status both say where the model runs and what it holds.
    const { modelSummary } = await server.connection.sendRequest(StatusRequest);
    assert.match(modelSummary ?? '', /^cpu, f32 compute, [0-9.]+ GB of weights$/);
    assert.equal(loadProgress[1].kind === 'end' && loadProgress[1].message, `ready: ${modelSummary}`);
  });

  test('inline completion answers items whose range lies in the document', async (t) => {
    const reply = await server.connection.sendRequest(InlineCompletionRequest.type, {
      textDocument: { uri },
      position: CURSOR,
      context: { triggerKind: InlineCompletionTriggerKind.Automatic },
    });
    const items = Array.isArray(reply) ? reply : reply?.items;
    assert.ok(Array.isArray(items), JSON.stringify(reply));
    t.diagnostic(`inline completion items: ${JSON.stringify(items)}`);
    const lines = SOURCE.split('\n');
    for (const item of items) {
      assert.equal(typeof item.insertText, 'string');
      assert.ok(item.range, 'the server gives the range to replace');
      for (const end of [item.range.start, item.range.end]) {
        assert.ok(end.line < lines.length && end.character <= lines[end.line].length, JSON.stringify(item.range));
      }
    }
  });

  test('completion answers a list', async () => {
    const reply = await server.connection.sendRequest(CompletionRequest.type, {
      textDocument: { uri },
      position: CURSOR,
    });
    const items = Array.isArray(reply) ? reply : reply?.items;
    assert.ok(Array.isArray(items), JSON.stringify(reply));
  });

  test('explain streams the markdown as $/progress reports, then returns it whole', async (t) => {
    const token = 'deepseek/explain/test';
    const progress = server.watchProgress(token);
    const { markdown } = await server.connection.sendRequest(ExplainRequest, {
      textDocument: { uri },
      range: { start: { line: 0, character: 0 }, end: { line: 3, character: 0 } },
      workDoneToken: token,
    });
    assert.equal(typeof markdown, 'string');
    t.diagnostic(`explanation: ${JSON.stringify(markdown)}`);
    // The reports travel apart from the reply: the end may come after it.
    await waitFor('the explain progress end', async () => progress.find((p) => p.kind === 'end'));
    assert.equal(progress[0].kind, 'begin');
    assert.equal(progress[progress.length - 1].kind, 'end');
    const streamed = progress.map((p) => (p.kind === 'report' ? (p.message ?? '') : '')).join('');
    assert.equal(streamed, markdown);
  });

  test('the settings the extension built drew no complaint', () => {
    assert.deepEqual(server.messages.filter((m) => m.message.includes('setting')), []);
  });

  test('shutdown and exit end the process cleanly', async () => {
    assert.equal(await server.shutdown(), 0);
  });
});

describe('bad settings, as workspace/configuration answers them', { timeout: 3 * TIMEOUT_MS }, () => {
  let server: Server;

  before(async () => {
    server = new Server({ maxTokens: 'x', maxTokenz: 5 });
    await server.initialize(serverSettings({ debounceMs: 0 }), workspace);
  });
  after(() => server.kill());

  test('a bad value is reported naming the key', async () => {
    const message = await server.waitForMessage('`maxTokens`');
    assert.match(message.message, /expected a non-negative integer/);
  });

  test('an unknown key is reported naming the key', async () => {
    await server.waitForMessage('`maxTokenz`');
  });

  test('a settings change makes the server pull the section again', async () => {
    server.configuration = { singleLine: 'yes' };
    await server.connection.sendNotification(DidChangeConfigurationNotification.type, { settings: null });
    await server.waitForMessage('`singleLine`');
    assert.equal(await server.shutdown(), 0);
  });
});
