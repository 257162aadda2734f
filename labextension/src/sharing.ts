/**
 * Sharing: the share dialog of a file (search users of this site and of other mesh sites,
 * choose viewer or editor, list and revoke shares) and the "Shared with me" and "Shared by
 * me" panels.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { postAPI, requestAPI } from './api';
import { actionButton, ErrorArea, h, listRow } from './dom';
import { shareCandidates } from './state';
import type { IFoundUser, IMeshSite, IReceivedShare, IShare } from './tokens';

/** Milliseconds to wait after the last keystroke before searching users. */
export const SEARCH_DELAY = 250;

function roleSelect(cls: string): HTMLSelectElement {
  return h(
    'select',
    { class: `jp-mesh-role-select ${cls}`, title: 'What they may do' },
    h('option', { value: 'viewer' }, 'Viewer'),
    h('option', { value: 'editor' }, 'Editor')
  );
}

async function revoke(share: IShare): Promise<void> {
  await requestAPI<null>('shares', { method: 'DELETE' }, { id: share.id, kind: share.kind });
}

/** The body of the share dialog of one file. */
export class ShareWidget extends Widget {
  constructor(readonly path: string) {
    super();
    this.addClass('jp-mesh-ShareWidget');
    this._search.addEventListener('input', () => {
      window.clearTimeout(this._timer);
      this._timer = window.setTimeout(() => void this._find(), SEARCH_DELAY);
    });
    this.node.append(
      h('label', { class: 'jp-mesh-label' }, 'Share with a person at this site or another site of the mesh'),
      h('div', { class: 'jp-mesh-share-row' }, this._search, this._role),
      this._candidates,
      this._errors.node,
      h('h3', { class: 'jp-mesh-label' }, 'Shared with'),
      this._shares
    );
    void this._load();
  }

  /** The search field (focused when the dialog opens). */
  get searchField(): HTMLInputElement {
    return this._search;
  }

  private async _load(): Promise<void> {
    try {
      const [sites, shares] = await Promise.all([
        requestAPI<{ site: string; sites: IMeshSite[] }>('sites'),
        requestAPI<{ shares: IShare[] }>('shares', {}, { path: this.path })
      ]);
      this._sites = sites.sites;
      this._renderShares(shares.shares);
    } catch (error) {
      this._errors.show(error);
    }
  }

  private async _reloadShares(): Promise<void> {
    const shares = await requestAPI<{ shares: IShare[] }>('shares', {}, { path: this.path });
    this._renderShares(shares.shares);
  }

  private async _find(): Promise<void> {
    const query = this._search.value.trim();
    this._errors.clear();
    let users: IFoundUser[] = [];
    const local = query.includes('@') ? '' : query;
    if (local.length >= 2) {
      try {
        users = (await requestAPI<{ users: IFoundUser[] }>('users', {}, { q: local })).users;
      } catch (error) {
        this._errors.show(error);
      }
    }
    if (query !== this._search.value.trim()) {
      return; // a newer search is on its way
    }
    this._candidates.replaceChildren();
    for (const c of shareCandidates(query, users, this._sites)) {
      this._candidates.append(
        h(
          'li',
          {
            class: `jp-mesh-candidate${c.ocm ? ' jp-mod-ocm' : ''}`,
            'data-grantee': c.grantee
          },
          h('span', { class: 'jp-mesh-candidate-label' }, c.label),
          actionButton('Share', 'jp-mesh-share-button', () => this._share(c.grantee))
        )
      );
    }
  }

  private async _share(grantee: string): Promise<void> {
    this._errors.clear();
    try {
      await postAPI<IShare>('shares', {
        path: this.path,
        grantee,
        role: this._role.value
      });
      this._search.value = '';
      this._candidates.replaceChildren();
      await this._reloadShares();
    } catch (error) {
      this._errors.show(error);
    }
  }

  private _renderShares(shares: IShare[]): void {
    this._shares.replaceChildren();
    if (!shares.length) {
      this._shares.append(h('li', { class: 'jp-mesh-empty' }, 'Not shared yet.'));
    }
    for (const share of shares) {
      this._shares.append(
        listRow(
          {
            class: 'jp-mesh-share',
            'data-grantee': share.grantee,
            'data-site': share.site,
            'data-kind': share.kind
          },
          null,
          [h('span', { class: 'jp-mesh-share-who' }, `${share.grantee} · ${share.site}`)],
          [
            h('span', { class: `jp-mesh-role jp-mesh-role-${share.role}` }, share.role),
            share.kind === 'ocm' ? h('span', { class: 'jp-mesh-tag' }, 'OCM') : null
          ],
          [
            actionButton('Revoke', 'jp-mesh-revoke', async () => {
              this._errors.clear();
              try {
                await revoke(share);
                await this._reloadShares();
              } catch (error) {
                this._errors.show(error);
              }
            })
          ]
        )
      );
    }
  }

  private _sites: IMeshSite[] = [];
  private _timer = 0;
  private _search = h('input', {
    class: 'jp-mesh-search',
    type: 'search',
    placeholder: 'Name, or user@site',
    'aria-label': 'Search people'
  });
  private _role = roleSelect('jp-mesh-share-role');
  private _candidates = h('ul', { class: 'jp-mesh-list jp-mesh-candidates' });
  private _errors = new ErrorArea();
  private _shares = h('ul', { class: 'jp-mesh-list jp-mesh-shares' });
}

/** Open the share dialog of a file. */
export async function openShareDialog(path: string): Promise<void> {
  const body = new ShareWidget(path);
  await showDialog({
    title: `Share ${path.split('/').pop()}`,
    body,
    focusNodeSelector: '.jp-mesh-search',
    buttons: [Dialog.okButton({ label: 'Done' })]
  });
}

/** "Shared with me": shares given to the user, with accept and decline for pending ones. */
export class SharedWithMePanel extends Widget {
  constructor(open: (name: string) => void) {
    super();
    this.id = 'jp-mesh-shared-with-me';
    this.addClass('jp-mesh-panel');
    this.title.caption = 'Shared with me';
    this._open = open;
    this.node.append(
      h(
        'h2',
        { class: 'jp-mesh-panel-title' },
        'Shared with me',
        actionButton('Refresh', 'jp-mesh-refresh', () => this.refresh())
      ),
      this._errors.node,
      this._list
    );
  }

  async refresh(): Promise<void> {
    this._errors.clear();
    try {
      const { shares } = await requestAPI<{ shares: IReceivedShare[] }>('received');
      this._render(shares);
    } catch (error) {
      this._errors.show(error);
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  private _render(shares: IReceivedShare[]): void {
    this._list.replaceChildren();
    const order = { pending: 0, accepted: 1, declined: 2 };
    shares.sort((a, b) => order[a.state] - order[b.state] || a.name.localeCompare(b.name));
    if (!shares.length) {
      this._list.append(h('li', { class: 'jp-mesh-empty' }, 'Nothing is shared with you yet.'));
    }
    for (const share of shares) {
      const actions = h('div', { class: 'jp-mesh-row-actions' });
      const row = listRow(
        {
          class: `jp-mesh-received jp-mod-${share.state}`,
          'data-name': share.name,
          'data-state': share.state,
          'data-kind': share.kind
        },
        null,
        [
          h('span', { class: 'jp-mesh-received-name' }, share.name),
          h('span', { class: 'jp-mesh-received-state' }, share.state)
        ],
        [
          h('span', { class: 'jp-mesh-received-from' }, `from ${share.owner} · ${share.site}`),
          h('span', { class: `jp-mesh-role jp-mesh-role-${share.role}` }, share.role),
          share.kind === 'ocm' ? h('span', { class: 'jp-mesh-tag' }, 'OCM') : null
        ]
      );
      row.querySelector('.jp-mesh-row-actions')!.replaceWith(actions);
      const act = (action: 'accept' | 'decline') => async () => {
        this._errors.clear();
        try {
          await postAPI('received', { id: share.id, kind: share.kind, action });
          await this.refresh();
        } catch (error) {
          this._errors.show(error);
        }
      };
      if (share.state === 'pending') {
        actions.append(
          actionButton('Accept', 'jp-mesh-accept', act('accept')),
          actionButton('Decline', 'jp-mesh-decline', act('decline'))
        );
      } else if (share.state === 'accepted') {
        actions.append(
          actionButton('Open', 'jp-mesh-open', async () => this._open(share.name))
        );
      } else {
        actions.append(actionButton('Accept', 'jp-mesh-accept', act('accept')));
      }
      this._list.append(row);
    }
  }

  private _open: (name: string) => void;
  private _errors = new ErrorArea();
  private _list = h('ul', { class: 'jp-mesh-list jp-mesh-received-list' });
}

/** "Shared by me": the user's shares, local and OCM, with revoke. */
export class SharedByMePanel extends Widget {
  constructor() {
    super();
    this.id = 'jp-mesh-shared-by-me';
    this.addClass('jp-mesh-panel');
    this.title.caption = 'Shared by me';
    this.node.append(
      h(
        'h2',
        { class: 'jp-mesh-panel-title' },
        'Shared by me',
        actionButton('Refresh', 'jp-mesh-refresh', () => this.refresh())
      ),
      this._errors.node,
      this._list
    );
  }

  async refresh(): Promise<void> {
    this._errors.clear();
    try {
      const { shares } = await requestAPI<{ shares: IShare[] }>('shared-by-me');
      this._render(shares);
    } catch (error) {
      this._errors.show(error);
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  private _render(shares: IShare[]): void {
    this._list.replaceChildren();
    if (!shares.length) {
      this._list.append(
        h('li', { class: 'jp-mesh-empty' }, 'You have not shared anything. Right-click a file and choose Share….')
      );
    }
    for (const share of shares) {
      this._list.append(
        listRow(
          {
            class: 'jp-mesh-share',
            'data-path': share.path ?? '',
            'data-grantee': share.grantee,
            'data-site': share.site,
            'data-kind': share.kind
          },
          null,
          [h('span', { class: 'jp-mesh-share-path' }, share.path ?? '')],
          [
            h('span', { class: 'jp-mesh-share-who' }, `${share.grantee} · ${share.site}`),
            h('span', { class: `jp-mesh-role jp-mesh-role-${share.role}` }, share.role),
            share.kind === 'ocm' ? h('span', { class: 'jp-mesh-tag' }, 'OCM') : null
          ],
          [
            actionButton('Revoke', 'jp-mesh-revoke', async () => {
              this._errors.clear();
              try {
                await revoke(share);
                await this.refresh();
              } catch (error) {
                this._errors.show(error);
              }
            })
          ]
        )
      );
    }
  }

  private _errors = new ErrorArea();
  private _list = h('ul', { class: 'jp-mesh-list jp-mesh-shares' });
}
