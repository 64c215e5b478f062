// One status bar item: what the server is doing, and a click away from its log.

import * as vscode from 'vscode';
import { ModelState } from './protocol';

export type ServerPhase = 'starting' | ModelState | 'error';

export class StatusBar implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  private phase: ServerPhase = 'starting';
  private detail: string | undefined;
  /** Inline completion requests in flight; more than one when VSCode retriggers before a reply. */
  private generating = 0;
  private enabled = true;

  constructor() {
    this.item.name = 'DeepSeek';
    this.item.command = 'deepseek.showLog';
    this.render();
    this.item.show();
  }

  dispose(): void {
    this.item.dispose();
  }

  setPhase(phase: ServerPhase, detail?: string): void {
    this.phase = phase;
    this.detail = detail;
    this.render();
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    this.render();
  }

  /** Marks one inline completion in flight until the returned function is called. */
  beginGeneration(): () => void {
    this.generating++;
    this.render();
    let ended = false;
    return () => {
      if (!ended) {
        ended = true;
        this.generating--;
        this.render();
      }
    };
  }

  private render(): void {
    const [icon, words] = this.describe();
    this.item.text = `${icon} DeepSeek`;
    const detail = this.detail ? `\n\n${this.detail}` : '';
    this.item.tooltip = `DeepSeek: ${words}${detail}\n\nClick to show the log.`;
    this.item.backgroundColor =
      this.phase === 'error' || this.phase === 'failed'
        ? new vscode.ThemeColor('statusBarItem.errorBackground')
        : undefined;
  }

  private describe(): [icon: string, words: string] {
    switch (this.phase) {
      case 'starting':
        return ['$(loading~spin)', 'starting the server'];
      case 'loading':
        return ['$(loading~spin)', 'loading the model'];
      case 'unconfigured':
        return ['$(warning)', 'no model configured (set deepseek.model)'];
      case 'failed':
        return ['$(error)', 'the model failed to load'];
      case 'error':
        return ['$(error)', 'the server is not running'];
      case 'ready':
        if (!this.enabled) {
          return ['$(circle-slash)', 'completions disabled (DeepSeek: Toggle Completions)'];
        }
        return this.generating > 0 ? ['$(sync~spin)', 'generating'] : ['$(sparkle)', 'ready'];
    }
  }
}
