/**
 * DocumentWatcher: follows the document of the tab the user is looking at (a notebook, or a
 * text file in the file editor), its awareness and the user's role on it, and turns them
 * into the status and collaborators that the status item and panels render.
 */
import { ILabShell } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { requestAPI } from './api';
import {
  collaboratorsOf,
  computeStatus,
  ICollaborator,
  IStatus,
  meshStateOf
} from './state';
import type { IAwarenessState, IDocumentAccess } from './tokens';

/** The part of a Yjs awareness that is read here. */
interface IAwarenessLike {
  clientID: number;
  getStates(): Map<number, IAwarenessState>;
  on(event: 'change', fn: () => void): void;
  off(event: 'change', fn: () => void): void;
}

/** The part of a document widget's context that is read here (notebooks and files alike). */
interface IContextLike {
  readonly path: string;
  readonly ready: Promise<void>;
  readonly pathChanged: ISignal<unknown, string>;
  readonly model: { readonly sharedModel: { readonly awareness?: unknown } };
}

/**
 * The kind of the current document, as its room names it (mesh_collab/kinds.py):
 * `notebook` (`json:notebook:<id>`) or `file` (`text:file:<id>`, the file editor).
 */
export type DocumentKind = 'notebook' | 'file';

/** The document the current tab shows. */
interface IFollowed {
  widget: Widget;
  kind: DocumentKind;
  context: IContextLike;
}

/**
 * Milliseconds between re-evaluations of the status besides awareness events, so that a
 * change the events miss still shows within a second.
 */
export const REFRESH_INTERVAL = 500;

/** What the watcher reports for the current tab. */
export interface IWatchedDocument {
  /** The current tab, or null when it is neither a notebook nor a file editor. */
  widget: Widget | null;
  kind: DocumentKind | null;
  path: string;
  status: IStatus;
  collaborators: ICollaborator[];
  access: IDocumentAccess | null;
  /** The last error of the role look-up, readable, or "". */
  error: string;
}

export class DocumentWatcher implements IDisposable {
  constructor(options: DocumentWatcher.IOptions) {
    this._shell = options.shell;
    this._notebooks = options.notebooks ?? null;
    this._editors = options.editors ?? null;
    this._shell.currentChanged.connect(this._onCurrent, this);
    // A tab may become current before its tracker knows it.
    this._notebooks?.widgetAdded.connect(this._onCurrent, this);
    this._editors?.widgetAdded.connect(this._onCurrent, this);
    this._timer = window.setInterval(() => this._update(), REFRESH_INTERVAL);
    window.addEventListener('online', this._onAwareness);
    window.addEventListener('offline', this._onAwareness);
    this._onCurrent();
  }

  /** Emitted when the status, the collaborators or the current document changed. */
  get changed(): ISignal<this, IWatchedDocument> {
    return this._changed;
  }

  /** The current state. */
  get current(): IWatchedDocument {
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
    const doc = this._doc;
    if (!doc) {
      return;
    }
    try {
      this._access = await requestAPI<IDocumentAccess>('status', {}, { path: doc.context.path });
      this._error = '';
      warnOnceIfKernelsMissCS3(this._access);
    } catch (error) {
      this._access = null;
      this._error = (error as Error).message;
    }
    if (this._doc === doc) {
      this._update(true);
    }
  }

  /** The document a widget shows, if it is a notebook panel or a file editor. */
  private _documentOf(widget: Widget | null): IFollowed | null {
    if (!widget) {
      return null;
    }
    if (this._notebooks?.has(widget)) {
      return { widget, kind: 'notebook', context: (widget as NotebookTab).context };
    }
    if (this._editors?.has(widget)) {
      return { widget, kind: 'file', context: (widget as EditorTab).context };
    }
    return null;
  }

  private _onCurrent(): void {
    const doc = this._documentOf(this._shell.currentWidget);
    if (doc?.widget === this._doc?.widget) {
      return;
    }
    this._detach();
    this._doc = doc;
    this._seen = false;
    this._access = null;
    this._error = '';
    if (doc) {
      void doc.context.ready.then(() => {
        if (this._doc === doc) {
          this._attach(doc);
        }
      });
      doc.context.pathChanged.connect(this._onPath, this);
      void this.refreshAccess();
    }
    this._update(true);
  }

  private _onPath(): void {
    void this.refreshAccess();
  }

  private _attach(doc: IFollowed): void {
    const awareness = doc.context.model.sharedModel.awareness as IAwarenessLike | undefined;
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
    if (this._doc) {
      this._doc.context.pathChanged.disconnect(this._onPath, this);
    }
  }

  private _onAwareness = (): void => {
    this._update();
  };

  private _update(force = false): void {
    const doc = this._doc;
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
    const next: IWatchedDocument = {
      widget: doc ? doc.widget : null,
      kind: doc ? doc.kind : null,
      path: doc ? doc.context.path : '',
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

  private _shell: ILabShell;
  private _notebooks: INotebookTracker | null;
  private _editors: IEditorTracker | null;
  private _doc: IFollowed | null = null;
  private _awareness: IAwarenessLike | null = null;
  private _access: IDocumentAccess | null = null;
  private _error = '';
  private _seen = false;
  private _key = '';
  private _timer: number;
  private _disposed = false;
  private _changed = new Signal<this, IWatchedDocument>(this);
  private _state: IWatchedDocument = {
    widget: null,
    kind: null,
    path: '',
    status: computeStatus({ mesh: null, seen: false, role: null }),
    collaborators: [],
    access: null,
    error: ''
  };
}

type NotebookTab = NonNullable<INotebookTracker['currentWidget']>;
type EditorTab = NonNullable<IEditorTracker['currentWidget']>;

export namespace DocumentWatcher {
  export interface IOptions {
    /** The shell: its current widget is the tab the user is looking at. */
    shell: ILabShell;
    /** Tells notebook panels apart (null: notebooks are not followed). */
    notebooks?: INotebookTracker | null;
    /** Tells file editors apart (null: text files are not followed). */
    editors?: IEditorTracker | null;
  }
}

let warnedAboutKernels = false;

/**
 * Say once per page when this node's kernels cannot see CS3 (no FUSE mount): a notebook's
 * `open("data.csv")` would then not find the file beside it.
 */
function warnOnceIfKernelsMissCS3(access: IDocumentAccess): void {
  const kernels = access.kernels;
  if (warnedAboutKernels || !kernels || kernels.mounted) {
    return;
  }
  warnedAboutKernels = true;
  Notification.warning(
    `Kernels on this server do not see CS3 files (${kernels.reason || 'no FUSE mount'}): ` +
      `they start in ${kernels.cwd}. Use cs3:// paths to reach CS3 from a kernel.`,
    { autoClose: false }
  );
}
