// What the extension sends the server as settings. No `vscode` import, so the tests can build
// exactly what the extension sends.

/** The configuration section, in VSCode and in the server's `workspace/configuration`. */
export const SECTION = 'deepseek';

/** The server's configuration keys (README, "deepseek-lsp serve"). */
export const SERVER_SETTING_KEYS = [
  'model',
  'chatModel',
  'device',
  'threads',
  'maxTokens',
  'chatMaxTokens',
  'temperature',
  'contextBudget',
  'suffixWindow',
  'workspaceIndex',
  'maxFileSize',
  'debounceMs',
  'singleLine',
  'languages',
  'cacheBudget',
  'logLevel',
  'logFile',
] as const;

/** The scopes of one setting, as `WorkspaceConfiguration.inspect` reports them. */
export interface SettingScopes {
  globalValue?: unknown;
  workspaceValue?: unknown;
  workspaceFolderValue?: unknown;
}

/**
 * The value the user set, most specific scope first; `undefined` when only the default applies.
 * Defaults are the server's business: sending them would override `--model` or
 * `$DEEPSEEK_LSP_MODEL` and pin values the server computes (threads, budgets).
 */
export function userValue(scopes: SettingScopes | undefined): unknown {
  return scopes?.workspaceFolderValue ?? scopes?.workspaceValue ?? scopes?.globalValue;
}

/**
 * The server's settings object from what the user set: only the server's keys, and never
 * `undefined` or `null` (the server would report them as bad values or reset to its default).
 * Extension-only keys (`serverPath`, `enable`) stay out: the server reports unknown keys.
 */
export function serverSettings(values: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const settings: Record<string, unknown> = {};
  for (const key of SERVER_SETTING_KEYS) {
    const value = values[key];
    if (value !== undefined && value !== null) {
      settings[key] = value;
    }
  }
  return settings;
}

/**
 * Keys sent before and unset now. The server keeps a value until it is given another, so going
 * back to its default takes a restart.
 */
export function droppedKeys(before: Readonly<Record<string, unknown>>, after: Readonly<Record<string, unknown>>): string[] {
  return Object.keys(before).filter((key) => !(key in after));
}
