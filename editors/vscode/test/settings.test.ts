import assert from 'node:assert/strict';
import { test } from 'node:test';
import { droppedKeys, SERVER_SETTING_KEYS, serverSettings, userValue } from '../src/settings';

test('the keys are the server settings of the README, in its order', () => {
  assert.deepEqual(
    [...SERVER_SETTING_KEYS],
    ['model', 'chatModel', 'device', 'threads', 'maxTokens', 'chatMaxTokens', 'temperature', 'contextBudget', 'suffixWindow',
      'workspaceIndex', 'maxFileSize', 'debounceMs', 'singleLine', 'languages', 'cacheBudget', 'logLevel', 'logFile'],
  );
});

test('only the server keys the user set are sent: no undefined, null or extension-only keys', () => {
  const settings = serverSettings({
    model: '~/models/DeepSeek-Coder-V2-Lite-Base',
    chatModel: undefined,
    logFile: null,
    maxTokens: 0,
    singleLine: false,
    languages: { markdown: false },
    serverPath: '/opt/deepseek-lsp',
    enable: true,
  });
  assert.deepEqual(settings, {
    model: '~/models/DeepSeek-Coder-V2-Lite-Base',
    maxTokens: 0,
    singleLine: false,
    languages: { markdown: false },
  });
  assert.deepEqual(serverSettings({}), {});
});

test('the most specific scope the user set wins; a default alone is not a user value', () => {
  assert.equal(userValue({ globalValue: 1, workspaceValue: 2, workspaceFolderValue: 3 }), 3);
  assert.equal(userValue({ globalValue: 1, workspaceValue: 2 }), 2);
  assert.equal(userValue({ globalValue: 1 }), 1);
  assert.equal(userValue({}), undefined);
  assert.equal(userValue(undefined), undefined);
});

test('keys the user unset since the last send are found, so the server can go back to its default', () => {
  assert.deepEqual(droppedKeys({ model: '/m', maxTokens: 8 }, { maxTokens: 16 }), ['model']);
  assert.deepEqual(droppedKeys({ maxTokens: 8 }, { maxTokens: 8, singleLine: true }), []);
});
