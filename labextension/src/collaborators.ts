/** The Collaborators side panel and the status bar item of the current document. */
import { Widget } from '@lumino/widgets';

import { h, listRow } from './dom';
import { formatTime } from './state';
import { DocumentWatcher, IWatchedDocument } from './watcher';

/** Everyone in the current notebook or text file: name, site and role. */
export class CollaboratorsPanel extends Widget {
  constructor(watcher: DocumentWatcher) {
    super();
    this.id = 'jp-mesh-collaborators';
    this.addClass('jp-mesh-panel');
    this.addClass('jp-mesh-CollaboratorsPanel');
    this.title.caption = 'Collaborators of the current document';
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

  private _render(state: IWatchedDocument): void {
    this._list.replaceChildren();
    if (!state.widget) {
      this._heading.textContent = 'Open a notebook or a text file to see who is in it.';
      this._state.textContent = '';
      this._error.hidden = true;
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
 * The status bar item of the current tab: live / offline (changes held, will merge) /
 * read-only (viewer) / locked by another application / lock lost / storage unreachable,
 * with the time of the last checkpoint; empty for a tab that is not a notebook or a file
 * editor.
 */
export class StatusItem extends Widget {
  constructor(watcher: DocumentWatcher, onClick: () => void) {
    super();
    this.addClass('jp-mesh-status');
    this.node.append(this._dot, this._label);
    this.node.addEventListener('click', onClick);
    watcher.changed.connect((_, state) => this._render(state), this);
    this._render(watcher.current);
  }

  private _render(state: IWatchedDocument): void {
    const s = state.status;
    if (!state.widget) {
      this.node.dataset.kind = 'none';
      this.node.dataset.checkpoint = '';
      this._label.textContent = '';
      this.node.title = '';
      return;
    }
    this.node.dataset.kind = s.kind;
    this.node.dataset.checkpoint = s.checkpoint ? String(s.checkpoint) : '';
    this._label.textContent = s.label;
    this.node.title = s.detail + (s.checkpoint ? ` (${formatTime(s.checkpoint)})` : '');
    if (state.error) {
      this.node.title += `\n${state.error}`;
    }
  }

  private _dot = h('span', { class: 'jp-mesh-status-dot' });
  private _label = h('span', { class: 'jp-mesh-status-label' });
}
