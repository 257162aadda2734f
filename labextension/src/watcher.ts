/**
 * NotebookWatcher: follows the current notebook's awareness and the user's role on it, and
 * turns them into the status and collaborators that the status item and panels render.
 */
import { NotebookPanel, INotebookTracker } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI } from './api';
import {
  collaboratorsOf,
  computeStatus,
  ICollaborator,
  IStatus,
  meshStateOf
} from './state';
import type { IAwarenessState, INotebookAccess } from './tokens';

/** The part of a Yjs awareness that is read here. */
interface IAwarenessLike {
  clientID: number;
  getStates(): Map<number, IAwarenessState>;
  on(event: 'change', fn: () => void): void;
  off(event: 'change', fn: () => void): void;
}

/**
 * Milliseconds between re-evaluations of the status besides awareness events, so that a
 * change the events miss still shows within a second.
 */
export const REFRESH_INTERVAL = 500;

/** What the watcher reports for the current notebook (or none). */
export interface IWatchedNotebook {
  panel: NotebookPanel | null;
  path: string;
  status: IStatus;
  collaborators: ICollaborator[];
  access: INotebookAccess | null;
  /** The last error of the role look-up, readable, or "". */
  error: string;
}

export class NotebookWatcher implements IDisposable {
  constructor(options: NotebookWatcher.IOptions) {
    this._tracker = options.tracker;
    this._tracker.currentChanged.connect(this._onCurrent, this);
    this._timer = window.setInterval(() => this._update(), REFRESH_INTERVAL);
    window.addEventListener('online', this._onAwareness);
    window.addEventListener('offline', this._onAwareness);
    this._onCurrent();
  }

  /** Emitted when the status, the collaborators or the notebook changed. */
  get changed(): ISignal<this, IWatchedNotebook> {
    return this._changed;
  }

  /** The current state. */
  get current(): IWatchedNotebook {
    return this._state;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    window.clearInterval(this._timer);
    window.removeEventListener('online', this._onAwareness);
    window.removeEventListener('offline', this._onAwareness);
    this._detach();
    Signal.clearData(this);
  }

  /** Look the user's role up again (after a share changed, for instance). */
  async refreshAccess(): Promise<void> {
    const panel = this._panel;
    if (!panel) {
      return;
    }
    const path = panel.context.path;
    try {
      this._access = await requestAPI<INotebookAccess>('status', {}, { path });
      this._error = '';
    } catch (error) {
      this._access = null;
      this._error = (error as Error).message;
    }
    if (this._panel === panel) {
      this._update(true);
    }
  }

  private _onCurrent(): void {
    this._detach();
    const panel = this._tracker.currentWidget;
    this._panel = panel;
    this._seen = false;
    this._access = null;
    this._error = '';
    if (panel) {
      void panel.context.ready.then(() => {
        if (this._panel === panel) {
          this._attach(panel);
        }
      });
      panel.context.pathChanged.connect(this._onPath, this);
      void this.refreshAccess();
    }
    this._update(true);
  }

  private _onPath(): void {
    void this.refreshAccess();
  }

  private _attach(panel: NotebookPanel): void {
    const awareness = (panel.context.model.sharedModel as any)
      .awareness as IAwarenessLike | undefined;
    if (!awareness) {
      return;
    }
    this._awareness = awareness;
    awareness.on('change', this._onAwareness);
    this._update(true);
  }

  private _detach(): void {
    if (this._awareness) {
      this._awareness.off('change', this._onAwareness);
      this._awareness = null;
    }
    if (this._panel) {
      this._panel.context.pathChanged.disconnect(this._onPath, this);
    }
  }

  private _onAwareness = (): void => {
    this._update();
  };

  private _update(force = false): void {
    const panel = this._panel;
    const states = this._awareness ? [...this._awareness.getStates().entries()] : [];
    const mesh = meshStateOf(states);
    if (mesh) {
      this._seen = true;
    }
    const role = this._access ? this._access.role : null;
    const status = computeStatus({
      mesh,
      seen: this._seen,
      role,
      online: navigator.onLine
    });
    const collaborators = this._awareness
      ? collaboratorsOf(states, this._awareness.clientID, role)
      : [];
    const next: IWatchedNotebook = {
      panel,
      path: panel ? panel.context.path : '',
      status,
      collaborators,
      access: this._access,
      error: this._error
    };
    const key = JSON.stringify([next.path, status, collaborators, this._access, this._error]);
    if (!force && key === this._key) {
      return;
    }
    this._key = key;
    this._state = next;
    this._changed.emit(next);
  }

  private _tracker: INotebookTracker;
  private _panel: NotebookPanel | null = null;
  private _awareness: IAwarenessLike | null = null;
  private _access: INotebookAccess | null = null;
  private _error = '';
  private _seen = false;
  private _key = '';
  private _timer: number;
  private _disposed = false;
  private _changed = new Signal<this, IWatchedNotebook>(this);
  private _state: IWatchedNotebook = {
    panel: null,
    path: '',
    status: computeStatus({ mesh: null, seen: false, role: null }),
    collaborators: [],
    access: null,
    error: ''
  };
}

export namespace NotebookWatcher {
  export interface IOptions {
    tracker: INotebookTracker;
  }
}
