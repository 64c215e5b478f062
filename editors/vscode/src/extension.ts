// The extension: starts deepseek-lsp, shows its state, and adds inline completions, explain,
// toggle and restart.

import * as vscode from 'vscode';
import {
  DidChangeConfigurationNotification,
  LanguageClient,
  LanguageClientOptions,
  ResponseError,
  State,
} from 'vscode-languageclient/node';
import { Explainer, messageOf } from './explain';
import { EXPLAIN_COMMAND, ExplainParams, MODEL_LOAD_TOKEN, StatusRequest } from './protocol';
import { findServer } from './serverPath';
import { droppedKeys, SECTION, SERVER_SETTING_KEYS, serverSettings, userValue } from './settings';
import { StatusBar } from './statusBar';

let server: Server | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const log = vscode.window.createOutputChannel('DeepSeek LSP', { log: true });
  const status = new StatusBar();
  const explainer = new Explainer(() => server?.client);
  const running = new Server(context.extensionPath, log, status, explainer);
  server = running;
  status.setEnabled(completionsEnabled());
  context.subscriptions.push(
    log,
    status,
    explainer,
    vscode.commands.registerCommand('deepseek.explainSelection', () => explainer.explainSelection()),
    vscode.commands.registerCommand('deepseek.toggle', toggleCompletions),
    vscode.commands.registerCommand('deepseek.restart', () => running.restart()),
    vscode.commands.registerCommand('deepseek.showLog', () => log.show()),
    vscode.workspace.onDidChangeConfiguration((event) => onSettingsChanged(event, running, status)),
  );
  await running.start();
}

export async function deactivate(): Promise<void> {
  await server?.stop();
}

/** One deepseek-lsp process and its client; restarted as a whole. */
class Server {
  client: LanguageClient | undefined;
  /** The settings the server was last given. */
  private sentSettings: Record<string, unknown> = {};

  constructor(
    private readonly extensionDir: string,
    private readonly log: vscode.LogOutputChannel,
    private readonly status: StatusBar,
    private readonly explainer: Explainer,
  ) {}

  async start(): Promise<void> {
    this.status.setPhase('starting');
    const location = findServer({
      configured: vscode.workspace.getConfiguration(SECTION).get<string>('serverPath'),
      extensionDir: this.extensionDir,
      pathEnv: process.env.PATH,
    });
    if (!location.found) {
      this.fail(location.message, 'Open Setting');
      return;
    }
    this.log.info(`starting ${location.path} (found via ${location.source})`);
    const client = new LanguageClient(
      'deepseek',
      'DeepSeek LSP',
      { command: location.path, args: ['serve'] },
      this.clientOptions(),
    );
    client.onDidChangeState(({ newState }) => {
      if (newState === State.Starting) {
        this.status.setPhase('starting');
      } else if (newState === State.Running) {
        void this.followModelLoad(client);
      } else if (newState === State.Stopped && client === this.client) {
        // Not a restart (that clears this.client first): the server exited or never started.
        // The client may start it again on its own (Starting, then Running).
        this.status.setPhase('error', 'The server stopped; see the log, then run "DeepSeek: Restart Server".');
      }
    });
    this.client = client;
    try {
      await client.start();
    } catch (error) {
      this.client = undefined;
      this.fail(`deepseek-lsp: ${location.path} did not start: ${messageOf(error)}`);
    }
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (!client) {
      return;
    }
    try {
      await client.stop();
    } catch (error) {
      this.log.warn(`stopping the server: ${messageOf(error)}`);
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** The server pulls changed settings; a key the user unset needs a restart (see droppedKeys). */
  async settingsChanged(): Promise<void> {
    const client = this.client;
    if (!client?.isRunning()) {
      return;
    }
    const dropped = droppedKeys(this.sentSettings, currentServerSettings());
    if (dropped.length > 0) {
      this.log.info(`restarting the server: ${dropped.join(', ')} back to the default`);
      await this.restart();
      return;
    }
    // Empty settings make the server pull section "deepseek", which the middleware answers.
    await client.sendNotification(DidChangeConfigurationNotification.type, { settings: null });
  }

  private settingsToSend(): Record<string, unknown> {
    this.sentSettings = currentServerSettings();
    return this.sentSettings;
  }

  private fail(message: string, settingButton?: string): void {
    this.log.error(message);
    this.status.setPhase('error', message);
    const buttons = settingButton ? [settingButton, 'Show Log'] : ['Show Log'];
    void vscode.window.showErrorMessage(message, ...buttons).then((choice) => {
      if (choice === settingButton) {
        void vscode.commands.executeCommand('workbench.action.openSettings', 'deepseek.serverPath');
      } else if (choice === 'Show Log') {
        this.log.show();
      }
    });
  }

  /**
   * Asks `deepseek/status` for the model's state until a load has ended. The load's `$/progress`
   * begin and end drive this; polling covers a status reply that overtook the progress end.
   */
  private async followModelLoad(client: LanguageClient): Promise<void> {
    // The server says "unconfigured" until it has handled `initialized` (which first pulls the
    // settings); only one that lasts is real.
    let unconfiguredReplies = 0;
    try {
      while (client === this.client && client.isRunning()) {
        const { model, modelError, modelSummary } = await client.sendRequest(StatusRequest);
        if (client !== this.client) {
          return;
        }
        const settled = model === 'ready' || model === 'failed' || (model === 'unconfigured' && ++unconfiguredReplies > 3);
        if (model !== 'unconfigured' || settled) {
          this.status.setPhase(model, modelError ?? modelSummary ?? undefined);
        }
        if (settled) {
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    } catch (error) {
      this.log.warn(`deepseek/status failed: ${messageOf(error)}`);
    }
  }

  private clientOptions(): LanguageClientOptions {
    return {
      documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
      outputChannel: this.log,
      initializationOptions: () => this.settingsToSend(),
      middleware: {
        provideInlineCompletionItems: async (document, position, context, token, next) => {
          if (!completionsEnabled()) {
            return null;
          }
          const done = this.status.beginGeneration();
          try {
            return await next(document, position, context, token);
          } finally {
            done();
          }
        },
        // The ghost text already shows the suggestion, and the server lets the newest request
        // for a document win: suggest-widget requests would cancel the inline ones.
        provideCompletionItem: () => undefined,
        handleWorkDoneProgress: (token, params, next) => {
          if (token === MODEL_LOAD_TOKEN && this.client) {
            if (params.kind === 'begin') {
              this.status.setPhase('loading', params.title);
            } else if (params.kind === 'end') {
              void this.followModelLoad(this.client);
            }
          }
          next(token, params);
        },
        // The server's "Explain with DeepSeek" code action: show the explanation, not drop it.
        executeCommand: (command, args, next) =>
          command === EXPLAIN_COMMAND
            ? this.explainer.explain(args[0] as ExplainParams)
            : next(command, args),
        workspace: {
          // Answer section "deepseek" with the server's keys the user set, nothing else.
          configuration: async (params, token, next) => {
            const answers = await next(params, token);
            if (answers instanceof ResponseError) {
              return answers;
            }
            return params.items.map((item, i) => (item.section === SECTION ? this.settingsToSend() : answers[i]));
          },
        },
      },
    };
  }
}

function currentServerSettings(): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration(SECTION);
  return serverSettings(Object.fromEntries(SERVER_SETTING_KEYS.map((key) => [key, userValue(config.inspect(key))])));
}

function completionsEnabled(): boolean {
  return vscode.workspace.getConfiguration(SECTION).get<boolean>('enable', true);
}

async function toggleCompletions(): Promise<void> {
  const config = vscode.workspace.getConfiguration(SECTION);
  const scopes = config.inspect<boolean>('enable');
  // Change the scope that decides the value, or a workspace setting would silently win.
  const target = scopes?.workspaceValue !== undefined ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
  const enable = !completionsEnabled();
  await config.update('enable', enable, target);
  void vscode.window.showInformationMessage(`DeepSeek completions ${enable ? 'enabled' : 'disabled'}.`);
}

async function onSettingsChanged(event: vscode.ConfigurationChangeEvent, running: Server, status: StatusBar): Promise<void> {
  if (event.affectsConfiguration(`${SECTION}.serverPath`)) {
    await running.restart();
    return;
  }
  if (event.affectsConfiguration(`${SECTION}.enable`)) {
    status.setEnabled(completionsEnabled());
  }
  if (SERVER_SETTING_KEYS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`))) {
    await running.settingsChanged();
  }
}
