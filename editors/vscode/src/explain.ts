// "Explain selection": a read-only markdown document beside the code that fills as the server
// streams the explanation (`$/progress` reports carry deltas), then holds the final result.

import { randomUUID } from 'node:crypto';
import * as vscode from 'vscode';
import { LanguageClient, WorkDoneProgress } from 'vscode-languageclient/node';
import { ExplainParams, ExplainRequest, ExplainResult } from './protocol';

const SCHEME = 'deepseek-explanation';

export class Explainer implements vscode.Disposable {
  /** The text of each explanation document, by URI. */
  private readonly texts = new Map<string, string>();
  private readonly changed = new vscode.EventEmitter<vscode.Uri>();
  private readonly registrations: vscode.Disposable;
  private count = 0;

  constructor(private readonly runningClient: () => LanguageClient | undefined) {
    this.registrations = vscode.Disposable.from(
      vscode.workspace.registerTextDocumentContentProvider(SCHEME, {
        onDidChange: this.changed.event,
        provideTextDocumentContent: (uri) => this.texts.get(uri.toString()) ?? '',
      }),
      vscode.workspace.onDidCloseTextDocument((document) => this.texts.delete(document.uri.toString())),
      this.changed,
    );
  }

  dispose(): void {
    this.registrations.dispose();
  }

  async explainSelection(): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    const client = this.runningClient();
    if (!editor || !client) {
      void vscode.window.showInformationMessage(
        editor ? 'DeepSeek: the server is not running (see "DeepSeek: Show Log").' : 'DeepSeek: open a file and select code to explain.',
      );
      return;
    }
    // An empty selection explains the function around the cursor (the server picks it).
    await this.explain({
      textDocument: { uri: client.code2ProtocolConverter.asUri(editor.document.uri) },
      range: client.code2ProtocolConverter.asRange(editor.selection),
    });
  }

  /** Also serves the server's "Explain with DeepSeek" code action, whose argument is the same. */
  async explain(params: ExplainParams): Promise<ExplainResult | undefined> {
    const client = this.runningClient();
    if (!client) {
      void vscode.window.showErrorMessage('DeepSeek: the server is not running (see "DeepSeek: Show Log").');
      return undefined;
    }
    const uri = vscode.Uri.from({ scheme: SCHEME, path: `/explanation-${++this.count}.md` });
    const heading = `# ${headingFor(params)}\n\n`;
    const show = (body: string) => {
      this.texts.set(uri.toString(), heading + body);
      this.changed.fire(uri);
    };
    show('_Explaining…_');
    // The `.md` path makes it a markdown document (the preview button renders it).
    const document = await vscode.workspace.openTextDocument(uri);
    await vscode.window.showTextDocument(document, { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true, preview: true });

    const token = `deepseek/explain/${randomUUID()}`;
    let streamed = '';
    let finished = false;
    const progress = client.onProgress(WorkDoneProgress.type, token, (value) => {
      if (!finished && value.kind === 'report' && value.message) {
        streamed += value.message;
        show(streamed);
      }
    });
    try {
      return await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: 'DeepSeek: explaining', cancellable: true },
        async (_, cancellation) => {
          try {
            const result = await client.sendRequest(ExplainRequest, { ...params, workDoneToken: token }, cancellation);
            // The result is the whole text; reports may trail it, so it has the last word.
            finished = true;
            show(result.markdown);
            return result;
          } catch (error) {
            finished = true;
            const why = cancellation.isCancellationRequested ? 'cancelled' : `failed: ${messageOf(error)}`;
            show(`${streamed}\n\n_Explanation ${why}._`);
            if (!cancellation.isCancellationRequested) {
              void vscode.window.showErrorMessage(`DeepSeek: explanation ${why}`);
            }
            return undefined;
          }
        },
      );
    } finally {
      progress.dispose();
    }
  }
}

function headingFor(params: ExplainParams): string {
  const file = decodeURIComponent(params.textDocument.uri.split('/').pop() ?? params.textDocument.uri);
  const first = params.range.start.line + 1;
  // A selection of whole lines ends at the start of the next one, which is not explained.
  const { end } = params.range;
  const last = end.character === 0 && end.line > params.range.start.line ? end.line : end.line + 1;
  return first === last ? `${file}, line ${first}` : `${file}, lines ${first}-${last}`;
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
