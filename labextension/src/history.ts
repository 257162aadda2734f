/**
 * The History side panel: the CS3 versions (checkpoints) of the current notebook or text
 * file, and restoring one through the live room, so that collaborators see it happen.
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { postAPI, requestAPI } from './api';
import { actionButton, ErrorArea, h, listRow } from './dom';
import { formatTime } from './state';
import type { IVersion } from './tokens';
import { DocumentKind, DocumentWatcher, IWatchedDocument } from './watcher';

interface IVersions {
  path: string;
  writable: boolean;
  versions: IVersion[];
}

interface IRestored {
  kept: number;
  edited: number;
  inserted: number;
  deleted: number;
}

function describeDate(seconds: number): string {
  const d = new Date(seconds * 1000);
  const today = new Date();
  const day =
    d.toDateString() === today.toDateString()
      ? 'today'
      : d.toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
  return `${day} ${formatTime(seconds)}`;
}

/** A version's size: bytes below 1 KB (text files are often that small), else KB. */
function describeSize(bytes: number): string {
  return bytes < 1024 ? `${bytes} B` : `${(bytes / 1024).toFixed(1)} KB`;
}

/** What a restore changed, for the notification (a text file is one piece of text). */
function describeRestore(kind: DocumentKind, when: string, stats: IRestored): string {
  if (kind === 'file') {
    return stats.edited + stats.inserted + stats.deleted
      ? `Restored the version of ${when}.`
      : `The version of ${when} is the current content: nothing changed.`;
  }
  return `Restored the version of ${when}: ${stats.edited} cell(s) changed, ${stats.inserted} added, ${stats.deleted} removed.`;
}

export class HistoryPanel extends Widget {
  constructor(watcher: DocumentWatcher) {
    super();
    this.id = 'jp-mesh-history';
    this.addClass('jp-mesh-panel');
    this.addClass('jp-mesh-HistoryPanel');
    this.title.caption = 'History of the current document (CS3 versions)';
    const refresh = actionButton('Refresh', 'jp-mesh-refresh', () => this.refresh());
    this.node.append(
      h('h2', { class: 'jp-mesh-panel-title' }, 'History', refresh),
      this._heading,
      h(
        'p',
        { class: 'jp-mesh-hint' },
        'Every checkpoint is a version. Restoring one replaces the live document for everyone in it; the replaced content stays in the history.'
      ),
      this._errors.node,
      this._list
    );
    this._watcher = watcher;
    watcher.changed.connect(this._onChanged, this);
  }

  /** Load the versions of the current document again. */
  async refresh(): Promise<void> {
    const path = this._path;
    this._errors.clear();
    if (!path) {
      this._list.replaceChildren();
      this._heading.textContent = 'Open a notebook or a text file to see its history.';
      return;
    }
    this._heading.textContent = path;
    try {
      const answer = await requestAPI<IVersions>('versions', {}, { path });
      if (path === this._path) {
        this._render(answer);
      }
    } catch (error) {
      this._list.replaceChildren();
      this._errors.show(error);
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  private _onChanged(_: DocumentWatcher, state: IWatchedDocument): void {
    const checkpoint = state.status.checkpoint;
    if (state.path !== this._path || checkpoint !== this._checkpoint) {
      this._path = state.path;
      this._kind = state.kind ?? 'notebook';
      this._checkpoint = checkpoint;
      if (this.isVisible) {
        void this.refresh();
      }
    }
  }

  private _render(answer: IVersions): void {
    this._list.replaceChildren();
    if (!answer.versions.length) {
      this._list.append(
        h('li', { class: 'jp-mesh-empty' }, 'No versions yet: the first checkpoint makes one.')
      );
    }
    for (const version of answer.versions) {
      const row = listRow(
        { class: 'jp-mesh-version', 'data-key': version.key },
        null,
        [h('span', { class: 'jp-mesh-version-time' }, describeDate(version.mtime))],
        [h('span', { class: 'jp-mesh-version-size' }, describeSize(version.size))],
        [
          answer.writable &&
            actionButton('Restore', 'jp-mesh-restore', () => this._restore(answer.path, version))
        ]
      );
      this._list.append(row);
    }
  }

  private async _restore(path: string, version: IVersion): Promise<void> {
    const kind = this._kind;
    const others = this._watcher.current.collaborators.filter(c => !c.me).length;
    const result = await showDialog({
      title: 'Restore this version?',
      body:
        `The ${kind === 'file' ? 'file' : 'notebook'} becomes its version of ${describeDate(version.mtime)}` +
        (others ? `, for you and ${others} collaborator(s) now in it` : '') +
        '. The current content stays in the history.',
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Restore' })]
    });
    if (!result.button.accept) {
      return;
    }
    this._errors.clear();
    try {
      const stats = await postAPI<IRestored>('restore', { path, key: version.key });
      Notification.success(describeRestore(kind, describeDate(version.mtime), stats), {
        autoClose: 5000
      });
    } catch (error) {
      this._errors.show(error);
    }
  }

  private _watcher: DocumentWatcher;
  private _path = '';
  private _kind: DocumentKind = 'notebook';
  private _checkpoint: number | null = null;
  private _heading = h('div', { class: 'jp-mesh-panel-subtitle' });
  private _errors = new ErrorArea();
  private _list = h('ul', { class: 'jp-mesh-list jp-mesh-versions' });
}
