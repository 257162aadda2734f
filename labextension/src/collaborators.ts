/** The Collaborators side panel and the status bar item of the current notebook. */
import { Widget } from '@lumino/widgets';

import { h, listRow } from './dom';
import { formatTime } from './state';
import { IWatchedNotebook, NotebookWatcher } from './watcher';

/** Everyone in the current notebook: name, site and role. */
export class CollaboratorsPanel extends Widget {
  constructor(watcher: NotebookWatcher) {
    super();
    this.id = 'jp-mesh-collaborators';
    this.addClass('jp-mesh-panel');
    this.addClass('jp-mesh-CollaboratorsPanel');
    this.title.caption = 'Collaborators of the current notebook';
    this.node.append(
      h('h2', { class: 'jp-mesh-panel-title' }, 'Collaborators'),
      this._heading,
      this._list,
      this._state,
      this._error
    );
    watcher.changed.connect((_, state) => this._render(state), this);
    this._render(watcher.current);
  }

  private _render(state: IWatchedNotebook): void {
    this._list.replaceChildren();
    if (!state.panel) {
      this._heading.textContent = 'Open a notebook to see who is in it.';
      this._state.textContent = '';
      return;
    }
    this._heading.textContent = state.path;
    for (const c of state.collaborators) {
      const avatar = h(
        'span',
        { class: 'jp-mesh-avatar', title: c.name },
        c.initials
      );
      if (c.color) {
        avatar.style.backgroundColor = c.color;
      }
      const row = listRow(
        {
          class: `jp-mesh-collaborator${c.me ? ' jp-mod-me' : ''}`,
          'data-username': c.username,
          'data-site': c.site,
          'data-role': c.role
        },
        avatar,
        [h('span', { class: 'jp-mesh-collaborator-name' }, c.name + (c.me ? ' (you)' : ''))],
        [h('span', { class: 'jp-mesh-collaborator-site' }, c.site)],
        [h('span', { class: `jp-mesh-role jp-mesh-role-${c.role || 'unknown'}` }, c.role || '…')]
      );
      this._list.append(row);
    }
    if (!state.collaborators.length) {
      this._list.append(h('li', { class: 'jp-mesh-empty' }, 'Connecting…'));
    }
    const s = state.status;
    this._state.textContent = s.label;
    this._state.dataset.kind = s.kind;
    this._state.title = s.detail;
    this._error.textContent = state.error;
    this._error.hidden = !state.error;
  }

  private _heading = h('div', { class: 'jp-mesh-panel-subtitle' });
  private _list = h('ul', { class: 'jp-mesh-list jp-mesh-collaborators' });
  private _state = h('div', { class: 'jp-mesh-panel-state' });
  private _error = h('div', { class: 'jp-mesh-error', role: 'alert', hidden: true });
}

/**
 * The status bar item: live / offline (changes held, will merge) / read-only (viewer) /
 * locked by another application, with the time of the last checkpoint.
 */
export class StatusItem extends Widget {
  constructor(watcher: NotebookWatcher, onClick: () => void) {
    super();
    this.addClass('jp-mesh-status');
    this.node.append(this._dot, this._label);
    this.node.addEventListener('click', onClick);
    watcher.changed.connect((_, state) => this._render(state), this);
    this._render(watcher.current);
  }

  private _render(state: IWatchedNotebook): void {
    const s = state.status;
    this.node.dataset.kind = state.panel ? s.kind : 'none';
    this.node.dataset.checkpoint = s.checkpoint ? String(s.checkpoint) : '';
    this._label.textContent = state.panel ? s.label : '';
    this.node.title = state.panel
      ? s.detail + (s.checkpoint ? ` (${formatTime(s.checkpoint)})` : '')
      : '';
    if (state.error) {
      this.node.title += `\n${state.error}`;
    }
  }

  private _dot = h('span', { class: 'jp-mesh-status-dot' });
  private _label = h('span', { class: 'jp-mesh-status-label' });
}
