// The server's custom requests and the progress the extension listens to (server/src/lsp).
// No `vscode` import, so the tests use the very same types.

import { ProgressToken, RequestType, RequestType0 } from 'vscode-languageserver-protocol';

export interface ExplainParams {
  textDocument: { uri: string };
  range: { start: { line: number; character: number }; end: { line: number; character: number } };
  /** The server streams the explanation as `$/progress` reports on this token. */
  workDoneToken?: ProgressToken;
}

export interface ExplainResult {
  markdown: string;
}

export const ExplainRequest = new RequestType<ExplainParams, ExplainResult, void>('deepseek/explain');

/** The server's code-action command for "Explain with DeepSeek"; its argument is `ExplainParams`. */
export const EXPLAIN_COMMAND = 'deepseek.explain';

export type ModelState = 'unconfigured' | 'loading' | 'ready' | 'failed';

export interface ServerStatus {
  model: ModelState;
  modelError?: string | null;
  /** Where the loaded model runs and what it holds: "cuda:0, bf16 compute, 9.61 GB of weights". */
  modelSummary?: string | null;
  documents: number;
  indexedFiles: number;
}

export const StatusRequest = new RequestType0<ServerStatus, void>('deepseek/status');

/** The token of the completion model's load progress (model_host.rs). */
export const MODEL_LOAD_TOKEN = 'deepseek/load/completion';
